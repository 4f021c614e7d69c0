"""`ActorPool.describe`: an actor that dies while loading its model is replaced, a bounded
number of times (the race benchmark kills actors at random, loading ones included)."""

from __future__ import annotations

import pytest
import ray
from ray.exceptions import RayActorError

from cluster.driver import ActorPool


class _Method:
    def __init__(self, actor: _Actor):
        self._actor = actor

    def remote(self) -> _Actor:
        return self._actor  # the "ref" is the actor itself: `wait` below decides


class _Actor:
    def __init__(self, n: int, dies: bool):
        self.n, self.dies = n, dies
        self.describe = _Method(self)


class _Factory:
    """Stands for `ray.remote(SweepWorker).options(...)`: the first `deaths` actors die loading."""

    def __init__(self, deaths: int):
        self.deaths, self.made = deaths, []

    def remote(self, *args) -> _Actor:
        actor = _Actor(len(self.made), dies=len(self.made) < self.deaths)
        self.made.append(actor)
        return actor


def _wait(actor: _Actor) -> dict:
    if actor.dies:
        raise RayActorError()
    return {"worker": f"a{actor.n}", "device": "cpu"}


@pytest.fixture
def killed(monkeypatch) -> list:
    killed: list = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: killed.append(actor.n))
    return killed


def test_an_actor_dying_while_loading_is_replaced(killed):
    factory = _Factory(deaths=2)
    pool = ActorPool("m", factory, (), 1)
    assert pool.describe(0, wait=_wait) == {"worker": "a2", "device": "cpu"}
    assert killed == [0, 1] and pool.actors[0] is factory.made[2]
    assert pool.describe(0, wait=_wait)["worker"] == "a2"  # cached: no new actor
    assert len(factory.made) == 3


def test_actors_that_keep_dying_end_the_run_with_a_clear_error(killed):
    factory = _Factory(deaths=10)
    pool = ActorPool("m", factory, (), 1)
    with pytest.raises(RuntimeError, match=r"could not start \(3 actors tried\)"):
        pool.describe(0, wait=_wait)
    assert len(factory.made) == 1 + ActorPool.LOAD_REPLACEMENTS
