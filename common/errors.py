"""The base class of every error `recsys` reports as one line."""


class RecsysError(Exception):
  """A problem a person can fix from its message alone: bad data, a busy or
  unusable folder, a refused request. The CLI prints it as one `error:` line; any
  other exception is a bug and keeps its traceback."""


def known_error(error: BaseException):
  """The RecsysError `error` is or was raised from, if any (else None).

  TFX and Beam re-raise a component's error from their own, so the whole chain
  is searched.
  """
  while error is not None:
    if isinstance(error, RecsysError):
      return error
    error = error.__cause__ or error.__context__
  return None
