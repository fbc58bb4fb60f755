"""Moved: `cachegate.flagstate` is now `cachegate.flags.state` (public names: `cachegate.flags`)."""

raise ImportError(
    "cachegate.flagstate moved to cachegate.flags.state; import from cachegate.flags instead"
)
