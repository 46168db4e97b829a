"""The values of generator tasks (``num_returns="streaming"`` or ``"dynamic"``), as ObjectRefs we own.

A streaming task's values arrive one by one (``stream_item`` pushes) while it runs; its consumer
reads them through an :class:`~ember.runtime.client.object_ref.ObjectRefGenerator`, which calls
``next_stream_item`` here. A dynamic task's values become, when it ends, the one value it returns.
"""

from ember.runtime.client.object_ref import DynamicObjectRefGenerator
from ember.runtime.client.task_spec import Stream
from ember.runtime.ids import return_object_id
from ember.runtime.messages import Return
from ember.runtime.serialization import serialize


class StreamValues:
    """Turns a generator task's values into owned objects (``submitter.stream_values``); no state of
    its own: each task's values are in its ``spec.stream``."""

    def __init__(self, client, objects):
        self.client = client
        self.objects = objects

    def new_item(self, spec, index: int) -> bytes:
        """An owned object for the generator's value number ``index``, held by the stream (so it
        lives until the consumer takes it, or the generator is dropped)."""
        oid = return_object_id(spec.task_id, index + spec.stream.offset)
        self.objects.new_owned(oid)
        with self.objects.cond:
            spec.stream.items.append(self.objects.ref(oid))
        self.client.changed = True
        return oid

    def item(self, spec, index, ret: Return | None, frames) -> None:
        """Value ``index`` of a generator: ``ret`` describes it, None when it is the error in ``frames``."""
        oid = self.new_item(spec, index)
        if ret is None:
            self.objects.complete(oid, error=bytes(frames[0]))
            return
        contained = [(inner.oid, inner.owner) for inner in ret.refs]
        if ret.kind == "v":
            inline = (frames[0], frames[1 : 1 + ret.first])
            self.objects.complete(oid, inline=inline, size=ret.second, contained=contained)
        else:
            self.objects.complete(oid, node_id=ret.second, size=ret.first, contained=contained)

    def complete_dynamic(self, spec) -> None:
        """A dynamic generator task ended: its return value is a DynamicObjectRefGenerator of the refs
        to what it yielded. Those refs are nested in that value, so they live as long as it does."""
        refs, spec.stream.items = spec.stream.items, []
        data, buffers, contained = serialize(DynamicObjectRefGenerator(refs), "a dynamic generator")
        size = len(data) + sum(b.nbytes for b in buffers)
        self.objects.complete(
            spec.return_ids[0],
            inline=(data, [bytes(b) for b in buffers]),
            size=size,
            contained=[(ref._id, ref._owner) for ref in contained],
        )

    def next_stream_item(self, stream: Stream, index: int, timeout=None):
        client = self.client
        led = False
        try:
            with self.objects.cond:
                while len(stream.items) <= index and not stream.done:
                    client.lead_once(None)
                    led = True
                if len(stream.items) > index:
                    return stream.items[index]
                return None
        finally:
            if led:
                client.stop_leading()
