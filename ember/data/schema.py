"""``Dataset.schema()``'s answer: column names and types, printed as a table (Ray's ``Schema``)."""

import pyarrow as pa


class Schema:
    """A dataset's columns: ``names``, ``types`` (Arrow types) and the underlying ``base_schema``."""

    def __init__(self, base_schema: pa.Schema):
        if not isinstance(base_schema, pa.Schema):
            raise TypeError(f"Schema wraps a pyarrow.Schema, got {type(base_schema).__name__}.")
        self.base_schema = base_schema

    @property
    def names(self) -> list:
        return list(self.base_schema.names)

    @property
    def types(self) -> list:
        return list(self.base_schema.types)

    def __len__(self) -> int:
        return len(self.base_schema)

    def __eq__(self, other) -> bool:
        if isinstance(other, Schema):
            return self.base_schema == other.base_schema
        if isinstance(other, pa.Schema):
            return self.base_schema == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.base_schema)

    def __repr__(self) -> str:
        rows = [("Column", "Type"), ("------", "----")] + [(n, str(t)) for n, t in zip(self.names, self.types)]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {kind}".rstrip() for name, kind in rows)

    def _repr_html_(self) -> str:
        import html

        body = "".join(
            f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(str(t))}</td></tr>"
            for n, t in zip(self.names, self.types)
        )
        return f"<table><thead><tr><th>Column</th><th>Type</th></tr></thead><tbody>{body}</tbody></table>"
