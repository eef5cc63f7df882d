"""The [[consumers]] section: who may call api_key routes, each with the SHA-256 of a key or a variable holding it.

Invariants:
- Keys are never stored in clear: a consumer gives either ``api_key_sha256`` or ``api_key_env``, never both.
- Consumer names are unique, and so are key digests.
"""

from __future__ import annotations

from lbtui.config.model import ConsumerConfig
from lbtui.config.options import Options, keys_of
from lbtui.config.reader import Context, Reader
from lbtui.config.values import q, valid_name


def parse_consumers(ctx: Context, root: Reader) -> list[ConsumerConfig]:
    consumers = []
    names: dict[str, str] = {}
    digests: dict[str, str] = {}
    for index, reader in (
        root.tables("consumers", keys_of(ConsumerConfig), "write [[consumers]] tables") or ()
    ):
        opts = Options(reader, ConsumerConfig)
        name = reader.required("name", valid_name("consumer"), f"consumer{index}")
        digest = opts.given("api_key_sha256")
        opts.given("api_key_env")
        reader.one_of(
            "api_key_sha256",
            "api_key_env",
            'or api_key_env = "NAME" (a variable holding the key); keys are never stored in clear',
        )
        if "name" in reader and name in names:
            ctx.add(reader.key_path("name"), f"consumer name {q(name)} is already used at {names[name]}")
        names.setdefault(name, reader.path)
        if digest is not None:
            if digest in digests:
                ctx.add(reader.key_path("api_key_sha256"), f"the same key as {digests[digest]}")
            digests.setdefault(digest, reader.path)
        consumers.append(opts.build(name=name))
    return consumers
