"""The evaluator's one exception, shared by its loading, metrics and pictures modules."""


class EvaluationError(Exception):
    """An evaluation the user set up wrongly; the message is one sentence naming the thing and the fix."""
