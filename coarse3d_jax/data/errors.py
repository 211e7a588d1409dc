"""Errors of bad input data; the message names the file and what is wrong."""


class DataError(Exception):
  """Raw data that cannot be converted: the message is one line naming the file."""
