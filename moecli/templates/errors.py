"""The templates' error."""

from moecli.errors import MoecliError


class TemplateError(MoecliError):
    """A chat template could not be read or rendered, or none fits the model."""
