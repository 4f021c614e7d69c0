"""`streamkv tune SPEC` / `python -m cluster.tune SPEC`: configuration search on Ray Tune.

    streamkv tune sweeps/tune_smollm2.yaml [--address HOST:6379] [--db URL] [--blobs URI]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m cluster.tune sweeps/tune_smollm2.yaml --db sqlite:////tmp/streamkv.db

The spec (`cluster.tune_spec`) is validated completely, with the model's config, before
anything runs. Then:
1. Ray: joined at --address / $RAY_ADDRESS, else started here on 127.0.0.1.
2. `resources.num_actors` model actors (`cluster.driver.SweepWorker`, the sweep's), each loading
   the model once, behind one `Dispatcher`; trials are Tune functions with no resources of
   their own, at most `search.max_concurrent` (default: one per actor) at a time.
3. Ray Tune: Optuna's TPE sampler (`ray.tune.search.optuna.OptunaSearch`, seeded), over the
   penalized objective (`store.searches.penalized`: the objective, plus a penalty that
   grows with how far the measured bits or bytes are over budget), or with multi_objective
   over (penalized objective, measured bits); ASHA stops bad trials after `grace_period`
   search shards. A trial's every unit is stored under the search id (a sweep row: same
   tables, config rows, measured bits, traces).
4. Resume: Tune's experiment lives in `<storage>/<search id>`; the same command restores it
   (`Tuner.restore`): finished and errored trials are not run again, unfinished ones restart
   and read their stored units instead of recomputing them.
5. The chosen trial (`searches.best_trial`: every search shard done, within budget, best
   objective) is evaluated on the held-apart shards, and so is the uncompressed baseline
   (method none), both stored as units of the search; the command prints the trials' table,
   both figures, and the config as a YAML block for a sweep spec's `points:`.

Exit status: 0 done (a config was chosen), 1 no trial met the budget, 2 invalid spec or
unusable store / cluster, 130 interrupted (Tune saved its state: the same command resumes).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .spec import SpecError, StoreSpec
from .tune_spec import ModelShape, SearchSpec, load_search_spec, model_problems, model_shape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="search spec YAML (see cluster/tune_spec.py)")
    parser.add_argument("--address", help="Ray cluster (GCS host:port or 'auto'); default: $RAY_ADDRESS, "
                                          "else a local Ray on 127.0.0.1")
    parser.add_argument("--db", help="results database URL (overrides store.url)")
    parser.add_argument("--blobs", help="blob root (overrides store.blobs)")
    parser.add_argument("--storage", help="Tune's experiment folder (overrides storage; default results/tune)")
    parser.add_argument("--search-id", help="resume/name this search id (default: <name>-<spec hash>)")
    parser.add_argument("--num-actors", type=int, help="model actors (overrides resources.num_actors)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the search space; run nothing")
    parser.add_argument("--verbose", action="store_true", help="Tune's own progress output too")


TRIAL_CPUS = 0.01


class SearchInterrupted(KeyboardInterrupt):
    """Tune stopped before every trial ended (Ctrl-C / SIGTERM): its state is saved; rerun."""


@dataclass(frozen=True)
class SearchOutcome:
    search_id: str
    trials: int  # trials with stored search units
    errored: int  # trials Tune recorded as errored (this run and before)
    best: Any  # searches.Trial | None
    baseline: Any  # searches.Trial | None (method none, held-apart shards)
    yaml_block: str


def resolve(spec: SearchSpec, args: argparse.Namespace) -> SearchSpec:
    """The spec with the command line's overrides."""
    store = StoreSpec(url=args.db or spec.store.url, blobs=args.blobs or spec.store.blobs)
    resources = spec.resources if not args.num_actors else replace(spec.resources, num_actors=args.num_actors)
    return replace(spec, store=store, resources=resources, storage=args.storage or spec.storage,
                   search_id=args.search_id or spec.search_id)


def check(spec: SearchSpec) -> ModelShape:
    """Every problem that needs the model's config or the store URL; returns the model's shape."""
    from streamkv.loading import model_config

    from .checks import store_url_problem

    problems = []
    if problem := store_url_problem(spec.store.resolved_url):
        problems.append(f"store.url: {problem}")
    try:
        config = model_config(spec.model)
    except (OSError, ValueError) as err:
        raise SpecError(problems + [f"model: cannot read the config of {spec.model!r}: {str(err).splitlines()[0]}"],
                        "search") from None
    problems += model_problems(spec, config)
    if problems:
        raise SpecError(problems, "search")
    return model_shape(config)


# --- Ray Tune --------------------------------------------------------------------------------------------
def start_actors(spec: SearchSpec, *, verbose: bool):
    import ray

    from .driver import SweepWorker
    from .progress import quiet_env
    from .tune_trials import Dispatcher

    gpus = spec.resources.num_gpus_per_actor
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    options: dict[str, Any] = dict(num_cpus=spec.resources.num_cpus_per_actor, num_gpus=gpus,
                                   max_restarts=3, max_task_retries=3)
    if not verbose:
        options["runtime_env"] = {"env_vars": quiet_env()}
    device = None if spec.device == "auto" else spec.device
    workers = [ray.remote(SweepWorker).options(**options).remote(spec.model, spec.dtype, device)
               for _ in range(spec.resources.num_actors)]
    return workers, ray.remote(num_cpus=0)(Dispatcher).remote(workers)


def _searcher(spec: SearchSpec, shape: ModelShape):
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from .tune_trials import start_points

    sampler = optuna.samplers.TPESampler(seed=spec.search.seed, multivariate=True,
                                         n_startup_trials=spec.search.n_startup_trials)
    # The start points are enqueued Optuna trials: run first, and they count among the startup ones.
    metric, mode = (["objective", "avg_bits"], ["min", "min"]) if spec.multi_objective else ("objective", "min")
    search = OptunaSearch(metric=metric, mode=mode, sampler=sampler,
                          points_to_evaluate=start_points(spec, shape) or None)
    return ConcurrencyLimiter(search, max_concurrent=spec.max_concurrent)


def _trainable(ctx):
    from ray import tune

    from .tune_trials import run_trial

    # A trial holds no model and computes nothing itself: a token CPU share (Tune refuses an
    # empty request), so trials never wait for the CPUs the model actors hold.
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), {"cpu": TRIAL_CPUS})


class _Lines:
    """A Tune callback printing one line per finished or errored trial."""

    def __new__(cls, objective: str):
        from ray.tune import Callback

        class Lines(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                r = trial.last_result or {}
                print(f"trial {trial.trial_id}: {objective}={r.get(objective)} bits={r.get('avg_bits')} "
                      f"shards={r.get('shards_done')} feasible={r.get('feasible')}", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                print(f"trial {trial.trial_id}: ERROR (recorded; the search goes on)", flush=True)

        return Lines()


def run_tuner(spec: SearchSpec, ctx, shape: ModelShape, *, verbose: bool):
    """Tune's run of the search, a new one or the restored one; returns its ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .tune_trials import param_space

    path = os.path.join(spec.resolved_storage, ctx.search_id)
    if tune.Tuner.can_restore(path):
        print(f"streamkv tune: resuming {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=_trainable(ctx), resume_unfinished=True,
                                   resume_errored=False, restart_errored=False,
                                   param_space=param_space(spec, shape))
        return tuner.fit()
    scheduler = None
    if spec.search.grace_period is not None:
        scheduler = ASHAScheduler(metric="objective", mode="min", time_attr="shards_done",
                                  max_t=len(spec.data.search_shards), grace_period=spec.search.grace_period,
                                  reduction_factor=spec.search.reduction_factor)
    tuner = tune.Tuner(
        _trainable(ctx), param_space=param_space(spec, shape),
        tune_config=tune.TuneConfig(search_alg=_searcher(spec, shape), scheduler=scheduler,
                                    num_samples=spec.search.num_samples, max_concurrent_trials=spec.max_concurrent),
        run_config=tune.RunConfig(name=ctx.search_id, storage_path=spec.resolved_storage,
                                  verbose=1 if verbose else 0, callbacks=[_Lines(spec.objective)],
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))
    return tuner.fit()


# --- after the search ---------------------------------------------------------------------------------
def evaluate(spec: SearchSpec, ctx, configs, shards, sweep_id: str | None = None) -> None:
    """Each config on each of `shards`, through the shared actors, stored under `sweep_id`
    (default: the search's); units done already are kept."""
    import ray

    from store import BlobStore, create_store_engine
    from store.repository import completed_units, register_sweep, write_unit_result

    from .tune_trials import unit_of

    sweep_id = sweep_id or ctx.search_id
    units = [unit_of(spec, c, s, sweep_id) for c in configs for s in shards]
    engine = create_store_engine(ctx.store_url)
    try:
        register_sweep(engine, sweep_id, spec.name, spec.raw, [u.key for u in units], [c.to_dict() for c in configs])
        done = completed_units(engine, sweep_id)
        todo = [u for u in units if u.key not in done]
        blobs = BlobStore(ctx.blob_root)
        pending = [ctx.dispatcher.run.remote(u) for u in todo]
        while pending:  # each result stored as it arrives: an interrupt loses no finished unit
            ready, pending = ray.wait(pending, num_returns=1)
            write_unit_result(engine, blobs, ray.get(ready[0]))
    finally:
        engine.dispose()


def evaluate_holdout(spec: SearchSpec, ctx, config) -> None:
    """`config` and the uncompressed baseline (same chunking) on the held-apart shards."""
    from streamkv.methods import preset

    evaluate(spec, ctx, [config, preset("none", chunk_size=config.chunk_size)], spec.data.holdout_shards)


def stored_trials(spec: SearchSpec, url: str, search_id: str | None):
    from store import readonly_engine
    from store.queries import result_frame

    from store.searches import trials

    engine = readonly_engine(url, pooled=False)
    try:
        rows = result_frame(engine, search_id).to_dict("records")
    finally:
        engine.dispose()
    return trials(rows, spec.data.search_shards, spec.data.holdout_shards, spec.data.shards)


def yaml_block(config, best, search_id: str, objective: str) -> str:
    """The chosen config as a sweep spec's `points:` entry, with its figures as comments."""
    import yaml

    from store.repository import jsonable

    held = best.holdout
    lines = [f"# best of search {search_id}: {objective} {_fmt(best.search.value(objective))} on the search "
             f"shards, {_fmt(held.value(objective) if held else None)} held apart; measured bits "
             f"{_fmt(best.search.avg_bits)} (held apart {_fmt(held.avg_bits if held else None)})",
             "points:"]
    body = yaml.safe_dump([jsonable(config.to_dict())], default_flow_style=None, sort_keys=False, width=100)
    return "\n".join(lines + ["  " + line for line in body.rstrip().splitlines()])


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def trials_table(found, objective: str) -> str:
    from .cli import format_table

    rows = [(t.config_id, t.method, t.search.units, _fmt(t.search.value(objective)), _fmt(t.search.avg_bits),
             _fmt(t.holdout.value(objective)) if t.holdout else "") for t in found]
    return format_table(["config_id", "method", "shards", objective, "measured_bits", f"held-apart {objective}"],
                        rows)


def pareto_trials(found, objective: str) -> list:
    """The complete trials no other complete trial beats in both the objective and the
    measured bits (what a multi-objective search is after), by bits."""
    from store.searches import OBJECTIVE_MODES, is_baseline, pareto_front

    sign = -1.0 if OBJECTIVE_MODES[objective] == "max" else 1.0
    done = [t for t in found if not is_baseline(t) and t.complete and t.search.value(objective) is not None
            and t.search.avg_bits is not None]
    return [done[i] for i in pareto_front([(sign * t.search.value(objective), t.search.avg_bits) for t in done])]


def run_search(spec: SearchSpec, *, address: str | None = None, verbose: bool = False) -> SearchOutcome:
    import ray

    from store.paths import absolute_store
    from store.repository import finish_sweep, register_sweep
    from store import create_store_engine
    from streamkv.methods import method_from_dict

    from .driver import connect_ray
    from store.searches import best_trial, is_baseline
    from .tune_trials import TrialContext

    shape = check(spec)
    url, blob_root = absolute_store(spec.store.resolved_url, spec.store.resolved_blobs)
    search_id = spec.resolved_search_id
    engine = create_store_engine(url)  # creates / upgrades the store
    register_sweep(engine, search_id, spec.name, spec.raw, [], [])
    started = connect_ray(address, verbose=verbose)
    workers, dispatcher = [], None
    try:
        workers, dispatcher = start_actors(spec, verbose=verbose)
        ctx = TrialContext(spec=spec, search_id=search_id, shape=shape, store_url=url,
                           blob_root=blob_root, dispatcher=dispatcher)
        grid = run_tuner(spec, ctx, shape, verbose=verbose)
        ended = grid.num_terminated + grid.num_errors
        if ended < spec.search.num_samples:  # Tune caught a signal and saved its state
            raise SearchInterrupted(f"search {search_id} interrupted after {ended} of "
                                    f"{spec.search.num_samples} trials; run the same command to resume")
        errored = grid.num_errors
        best = best_trial(stored_trials(spec, url, search_id), spec.objective, spec.max_avg_bits,
                          spec.max_cache_bytes)
        if best is not None:
            config = method_from_dict(best.config)
            evaluate_holdout(spec, ctx, config)
        found = stored_trials(spec, url, search_id)
        finish_sweep(engine, search_id, "done" if best is not None else "failed")
    finally:
        engine.dispose()
        for actor in workers + ([dispatcher] if dispatcher is not None else []):
            ray.kill(actor)  # their CPUs go back to a Ray this call did not start
        if started:
            ray.shutdown()
    best = next((t for t in found if best is not None and t.config_id == best.config_id), None)
    baseline = next((t for t in found if is_baseline(t)), None)
    block = yaml_block(method_from_dict(best.config), best, search_id, spec.objective) if best else ""
    return SearchOutcome(search_id, sum(1 for t in found if not is_baseline(t)), errored, best, baseline, block)


def report(spec: SearchSpec, outcome: SearchOutcome, url: str, file=sys.stdout) -> None:
    from store.searches import is_baseline

    found = stored_trials(spec, url, outcome.search_id)
    print(f"\nsearch {outcome.search_id}: {outcome.trials} trial config(s) stored, {outcome.errored} errored",
          file=file)
    print(trials_table([t for t in found if not is_baseline(t)], spec.objective), file=file)
    if spec.multi_objective:
        front = pareto_trials(found, spec.objective)
        print(f"\nPareto front ({spec.objective} vs measured bits, complete trials, {len(front)}):", file=file)
        print(trials_table(front, spec.objective), file=file)
    if outcome.best is None:
        print("no trial completed its search shards within the budget", file=file)
        return
    b, base = outcome.best, outcome.baseline
    print(f"\nchosen {b.config_id}: {spec.objective} {_fmt(b.search.value(spec.objective))} (search shards), "
          f"{_fmt(b.holdout.value(spec.objective) if b.holdout else None)} (held-apart shards); "
          f"perplexity {_fmt(b.holdout.perplexity if b.holdout else None)} held apart vs "
          f"{_fmt(base.holdout.perplexity if base and base.holdout else None)} uncompressed", file=file)
    print("\n" + outcome.yaml_block, file=file)


def run_from_args(args: argparse.Namespace) -> int:
    if not args.verbose:
        from .progress import hide_third_party_output

        hide_third_party_output()
    from store import StoreError

    from .driver import ClusterConnectionError

    try:
        spec = resolve(load_search_spec(args.spec), args)
        if args.dry_run:
            shape = check(spec)
            from .tune_trials import param_space

            print(f"search {spec.resolved_search_id}: {spec.search.num_samples} trials over "
                  f"{len(spec.data.search_shards)} search shard(s), {len(spec.data.holdout_shards)} held apart; "
                  f"parameters: {', '.join(param_space(spec, shape))}")
            return 0
        outcome = run_search(spec, address=args.address, verbose=args.verbose)
    except (SpecError, FileNotFoundError) as err:
        print(f"streamkv tune: invalid search spec, nothing was run.\n{err}", file=sys.stderr)
        return 2
    except (StoreError, ClusterConnectionError) as err:
        print(f"streamkv tune: {err}", file=sys.stderr)
        return 2
    except SearchInterrupted as err:
        print(f"streamkv tune: {err}", file=sys.stderr)
        return 130
    from store.paths import absolute_store

    report(spec, outcome, absolute_store(spec.store.resolved_url, spec.store.resolved_blobs)[0])
    return 0 if outcome.best is not None else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
