"""Helpers of the Flower tests: an in-memory Grid that calls ClientApps directly, tiny folder data."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from PIL import Image

from conftest import task_identity  # noqa: F401 - re-exported for the Flower tests


class DirectGrid(Grid):
    """A Grid whose nodes are ClientApps called synchronously in this process (one Context each)."""

    def __init__(self, client_app: ClientApp, node_configs: list[dict[str, Any]]) -> None:
        self.client_app = client_app
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i, node_config=dict(cfg), state=RecordDict(), run_config={})
            for i, cfg in enumerate(node_configs)
        }
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used by fedseg
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover - not used by fedseg
        raise NotImplementedError

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # pragma: no cover - not used by fedseg
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            self.sent.append(message)
            try:
                reply = self.client_app(message, self.contexts[message.metadata.dst_node_id])
            except Exception as exc:  # as Flower's runtimes do: the server gets an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
            self.replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:  # pragma: no cover - not used by fedseg
        return self.pull_messages(self.push_messages(messages))


def write_folder_sites(root: Path, sites: list[str], *, n: int = 8, size: int = 16) -> None:
    """Tiny PNG sites ``root/<site>/{images,masks}``: a bright square on noise, mask = the square."""
    rng = np.random.default_rng(0)
    for s, site in enumerate(sites):
        for sub in ("images", "masks"):
            (root / site / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = (rng.random((size, size)) * 60 + 30 * s).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            r, c = rng.integers(1, size // 2, size=2)
            mask[r:r + size // 3, c:c + size // 3] = 1
            image[mask == 1] += 120
            Image.fromarray(image).save(root / site / "images" / f"case{i:02d}.png")
            Image.fromarray(mask).save(root / site / "masks" / f"case{i:02d}.png")


FOREIGN_APP = '''"""Not fedseg: a ClientApp that would list the site's files."""
from pathlib import Path

from flwr.app import Message
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

client = ClientApp()
server = ServerApp()


@client.query()
def snoop(message: Message, context) -> Message:
    Path("PWNED").write_text("\\n".join(str(p) for p in Path("/").iterdir()))
    return Message(message.content, reply_to=message)
'''


def write_foreign_app(app_dir: Path, *, publisher: str = "mole", name: str = "mole-app") -> Path:
    """A Flower app that is not fedseg's (its own code): what an intruder would submit."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "mole_app.py").write_text(FOREIGN_APP)
    (app_dir / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        f'[project]\nname = "{name}"\nversion = "1.0.0"\ndependencies = []\n\n'
        f'[tool.flwr.app]\npublisher = "{publisher}"\n\n'
        '[tool.flwr.app.components]\nserverapp = "mole_app:server"\nclientapp = "mole_app:client"\n\n'
        '[tool.flwr.app.config]\n'
    )
    return app_dir


def run_flower_sim(cfg: Any, run_dir: Path, nodes: int = 2) -> Any:
    """Run ``cfg`` as a flower-sim federation in this process: the ServerApp driving ``nodes``
    partition ClientApps through :class:`DirectGrid` (the parity tests' engine); the server's result."""
    from fedseg.runtime.common import config_text
    from fedseg.runtime.flower.client_app import clear_cache, make_client_app
    from fedseg.runtime.flower.keys import RunKey
    from fedseg.runtime.flower.server_app import run_server

    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(run_dir)}
    clear_cache()
    try:
        with task_identity():
            grid = DirectGrid(make_client_app(run_config), [{"partition-id": i} for i in range(nodes)])
            return run_server(grid, run_config, engine="flower-sim", expected_nodes=nodes, write_report=False)
    finally:
        clear_cache()
