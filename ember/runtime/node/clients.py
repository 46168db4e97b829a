"""Who may hold a node's leases and store reservations, and when they are gone.

Every lease and every store reservation belongs to a registered client: a driver or a worker of
this node (REGISTER_CLIENT, WORKER_READY), or a peer that leases here from elsewhere (the head for
its actors, a client on another node for its spilled tasks; REGISTER_CLIENT with kind "peer"). A
request that takes resources from a connection that never registered is refused, so nothing is held
by someone whose end the node manager cannot see.

A registration is bound to the connection it came on (its socket's file descriptor, read from the
message). When that connection closes (the client closed its socket, or its process died and the
kernel closed it), the monitor of the node manager's socket reports the descriptor and everything
the client held is reclaimed. :class:`ClientTable` keeps these bindings; it does no I/O.

Descriptors are reused: a new connection may get the descriptor of one that just closed. The close
is reported (in order, on the monitor) before the new connection's first message can be read, and
the node manager reads every pending report before it binds a registration, so a report never
reaches a binding made after it.
"""

from dataclasses import dataclass


class UnknownClientError(PermissionError):
    """A request that takes a node's resources came on a connection that is not a registered client."""


@dataclass
class Client:
    client_id: bytes
    identity: bytes  # its connection's routing id on the node manager's socket
    kind: str  # "driver", "worker" or "peer"
    pid: int
    fd: int = -1  # its connection's file descriptor here (-1: unknown)
    job: bytes | None = None
    address: str | None = None  # its owner service, if it owns objects


class ClientTable:
    """The registered clients, by client id, by connection and by descriptor."""

    def __init__(self):
        self.clients: dict[bytes, Client] = {}
        self.by_identity: dict[bytes, bytes] = {}  # routing id -> client id
        self.by_fd: dict[int, set] = {}  # descriptor -> routing ids registered on it

    def __len__(self) -> int:
        return len(self.clients)

    def __contains__(self, client_id) -> bool:
        return client_id in self.clients

    def get(self, client_id: bytes) -> Client | None:
        return self.clients.get(client_id)

    def values(self) -> list:
        return list(self.clients.values())

    def of(self, identity: bytes) -> Client | None:
        """The client registered on connection ``identity``, if any."""
        client_id = self.by_identity.get(identity)
        return None if client_id is None else self.clients.get(client_id)

    def register(self, client: Client) -> bytes | None:
        """Record ``client``; a registration again from its own connection updates it.

        Returns the routing id of an older connection that held the same client id (the client came
        back on a new one: what the old one held is to be reclaimed), or None. Raises ValueError when
        the connection registered as another client already (one client per connection).
        """
        current = self.by_identity.get(client.identity)
        if current is not None and current != client.client_id:
            raise ValueError("this connection is registered as another client already")
        old = self.clients.get(client.client_id)
        replaced = None
        if old is not None and old.identity != client.identity:
            replaced = old.identity
            self._unbind(old)
        elif old is not None:
            self._unbind(old)
        self.clients[client.client_id] = client
        self.by_identity[client.identity] = client.client_id
        if client.fd >= 0:
            self.by_fd.setdefault(client.fd, set()).add(client.identity)
        return replaced

    def remove(self, client_id: bytes) -> Client | None:
        client = self.clients.pop(client_id, None)
        if client is not None:
            self._unbind(client)
        return client

    def closed(self, fd: int) -> list:
        """Connection ``fd`` closed: the client ids registered on it (still in the table)."""
        identities = self.by_fd.pop(fd, set())
        return [self.by_identity[i] for i in identities if i in self.by_identity]

    def _unbind(self, client: Client) -> None:
        if self.by_identity.get(client.identity) == client.client_id:
            del self.by_identity[client.identity]
        on_fd = self.by_fd.get(client.fd)
        if on_fd is not None:
            on_fd.discard(client.identity)
            if not on_fd:
                del self.by_fd[client.fd]
