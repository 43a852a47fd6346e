"""The rule of a label space, decided once: one class name per class (read by the datamodule, which gets the
data config, and by the module, which may be built by hand)."""

from __future__ import annotations

from collections.abc import Sequence

from segloss.errors import ConfigError


def check_class_names(class_names: Sequence[str], num_classes: int) -> None:
    """Raise a :class:`ConfigError` naming ``data.class_names`` unless there is one name per class."""
    if len(class_names) != num_classes:
        raise ConfigError(
            f"data.class_names has {len(class_names)} names but data.num_classes={num_classes}; give one name per class"
        )
