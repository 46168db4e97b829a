"""Holding SIGINT back while the main thread runs the client's I/O loop (see CoreClient.lead_once)."""

# _signal: the C functions under the signal module, whose wrappers turn every handler and number
# into an enum on the way (about 3 us a call here); a synchronous get swaps the handler twice.
import _signal
import os
import signal


def hold_interrupts(wake_fd: int):
    """On the main thread, hold back SIGINT's handler (KeyboardInterrupt, a task's cancellation)
    while this thread leads the loop: raised in the middle of handling a message, it would lose
    the message. The signal ends the poll (a byte on ``wake_fd``); its handler runs between rounds
    (``release_interrupts``). Returns (previous handler, signals held), or False when there is no
    Python handler."""
    previous = _signal.getsignal(signal.SIGINT)
    if not callable(previous):
        return False
    held: list = []

    def hold(signum, frame):
        held.append((signum, frame))
        try:
            os.write(wake_fd, b"x")
        except OSError:
            pass

    _signal.signal(signal.SIGINT, hold)
    return previous, held


def release_interrupts(guard) -> None:
    """Put SIGINT's handler back, and run it for a signal held meanwhile (it may raise here)."""
    if guard:
        previous, held = guard
        _signal.signal(signal.SIGINT, previous)
        if held:
            previous(*held[0])  # KeyboardInterrupt (or a task's cancellation) raises here, safely
