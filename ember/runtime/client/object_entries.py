"""What an owner knows of each object: its state and where its value is (plain records)."""

PENDING, READY, FAILED = 0, 1, 2


NODE_SUFFIX_LENGTH = 13


def node_suffix(node_id: bytes | None) -> str:
    """The end of the owner address of a process on ``node_id`` (see ``CoreClient.address``)."""
    return f".{node_id.hex()[: NODE_SUFFIX_LENGTH - 1]}" if node_id else ""


class ObjectEntry:
    """An object this process owns."""

    __slots__ = ("state", "inline", "node_id", "size", "error", "futures", "copies")

    def __init__(self, state=PENDING):
        self.state = state
        self.inline = None  # (data, buffers) for small values
        self.node_id = None  # the node whose store holds a large value
        self.copies = None  # other nodes that pulled a copy (freed with it; used if its node dies)
        self.size = 0
        self.error = None  # an exception, or the pickled TaskError
        self.futures: list = []


class BorrowedValue:
    """A fetched copy of an object owned elsewhere, cached while this process holds refs to it."""

    __slots__ = ("state", "inline", "node_id", "error", "futures", "owner", "refetches")

    def __init__(self, owner: str | None = None):
        self.owner = owner
        self.refetches = 0
        self.state = PENDING
        self.inline = self.node_id = self.error = None
        self.futures: list = []
