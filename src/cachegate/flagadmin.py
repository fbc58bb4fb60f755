"""Moved: `cachegate.flagadmin` is now `cachegate.flags.admin` (public names: `cachegate.flags`)."""

raise ImportError(
    "cachegate.flagadmin moved to cachegate.flags.admin; import from cachegate.flags instead"
)
