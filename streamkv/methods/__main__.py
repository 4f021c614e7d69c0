"""`python -m streamkv.methods`: the settings and presets of every method streamkv itself
defines, as the Markdown the README shows (tests/test_readme_api.py checks the README holds
exactly this)."""

from streamkv.methods import method_class, method_names, preset_names, preset_settings


def markdown() -> str:
    parts = []
    for name in method_names():
        cls = method_class(name)
        if not cls.__module__.startswith("streamkv."):  # registered from elsewhere (workers, a user)
            continue
        presets = [p for p in preset_names() if preset_settings(p)[0] is cls]
        title = f"`{name}` (`{cls.__module__}.{cls.__qualname__}`)"
        line = f"presets: {', '.join(f'`{p}`' for p in presets)}" if presets else "no preset"
        parts.append(f"#### {title}\n\n{(cls.__doc__ or '').strip().splitlines()[0]} ({line})\n\n"
                     f"{cls.settings_table()}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    print(markdown())
