"""The one exception type users see for bad input."""


class InputError(ValueError):
    """Bad user input (an image, a video, a message list, a request).

    The message always says what was wrong, which item it was, and how to fix it.
    """
