"""The base class of every error `recsys` reports as one line."""


class RecsysError(Exception):
  """A problem a person can fix from its message alone: bad data, a busy or
  unusable folder, a refused request. The CLI prints it as one `error:` line; any
  other exception is a bug and keeps its traceback."""
