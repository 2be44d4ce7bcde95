"""Errors a user can act on. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
    """Bad input (recipe, file, argument): the message is a single line naming what is wrong."""
