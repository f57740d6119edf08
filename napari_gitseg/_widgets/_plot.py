"""A small live plot of training loss and validation Dice (matplotlib on Qt)."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure


class LossDicePlot(FigureCanvasQTAgg):
    """Loss per step (left axis) and validation Dice per epoch (right axis)."""

    def __init__(self):
        self.figure = Figure(figsize=(3.2, 2.0), dpi=90, tight_layout=True)
        super().__init__(self.figure)
        self.ax_loss = self.figure.add_subplot(111)
        self.ax_dice = self.ax_loss.twinx()
        self.clear()

    def clear(self) -> None:
        """Forget all points (a new round starts)."""
        self.loss_x: list[float] = []
        self.loss_y: list[float] = []
        self.dice_x: list[float] = []
        self.dice_y: list[float] = []
        self._draw()

    def add_loss(self, epoch_fraction: float, loss: float) -> None:
        """Add one training-loss point (x in epochs)."""
        self.loss_x.append(epoch_fraction)
        self.loss_y.append(loss)
        if len(self.loss_x) % 5 == 1:
            self._draw()

    def add_dice(self, epoch: float, dice: float) -> None:
        """Add one validation-Dice point."""
        self.dice_x.append(epoch)
        self.dice_y.append(dice)
        self._draw()

    def _draw(self) -> None:
        self.ax_loss.cla()
        self.ax_dice.cla()
        self.ax_loss.plot(self.loss_x, self.loss_y, color="tab:gray", lw=1)
        self.ax_dice.plot(self.dice_x, self.dice_y, color="tab:green", marker="o", lw=1.5)
        self.ax_loss.set_xlabel("epoch", fontsize=8)
        self.ax_loss.set_ylabel("loss", fontsize=8, color="tab:gray")
        self.ax_dice.yaxis.tick_right()  # cla() on a twin axis moves its ticks and label back left
        self.ax_dice.yaxis.set_label_position("right")
        self.ax_dice.set_ylabel("val Dice", fontsize=8, color="tab:green")
        self.ax_dice.set_ylim(0, 1)
        if not self.loss_x:
            self.ax_loss.set_xlim(0, 1)
            self.ax_loss.set_ylim(0, 1)
            self.ax_loss.text(0.5, 0.5, "loss and validation Dice\nappear here during a round", ha="center",
                              va="center", fontsize=8, color="0.5", transform=self.ax_loss.transAxes)
        for ax in (self.ax_loss, self.ax_dice):
            ax.tick_params(labelsize=7)
        self.draw_idle()
