"""A rich progress display for rounds, clients and local epochs."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from fedseg.engine.progress import ProgressSink

__all__ = ["RichProgress"]


class RichProgress(ProgressSink):
    """Three bars: rounds, clients of the current round, epochs of the current client."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._rounds = self._clients = self._epochs = TaskID(-1)

    def start(self, total_rounds: int, start_round: int) -> None:
        self._progress.start()
        self._rounds = self._progress.add_task("rounds", total=total_rounds, completed=start_round - 1, info="")
        self._clients = self._progress.add_task("clients", total=1, info="")
        self._epochs = self._progress.add_task("epochs", total=1, info="")

    def round_start(self, rnd: int, clients: list[str]) -> None:
        self._progress.update(self._clients, total=len(clients), completed=0, info="")

    def client_start(self, client_id: str, epochs: int) -> None:
        self._progress.update(self._epochs, total=epochs, completed=0, info=client_id)

    def epoch_end(self, client_id: str, epoch: int, epochs: int, loss: float) -> None:
        self._progress.update(self._epochs, completed=epoch, info=f"{client_id} loss {loss:.4f}")

    def client_end(self, client_id: str, loss: float) -> None:
        self._progress.advance(self._clients)

    def round_end(self, rnd: int, summary: dict[str, float]) -> None:
        dice = summary.get("val_dice")
        info = f"val Dice {dice:.3f}" if dice is not None and dice == dice else ""
        self._progress.update(self._rounds, completed=rnd, info=info)

    def message(self, text: str) -> None:
        self._progress.console.print(text)

    def stop(self) -> None:
        self._progress.stop()
