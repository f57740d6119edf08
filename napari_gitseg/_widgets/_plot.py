"""A small live plot of training loss and validation Dice (matplotlib on Qt)."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure


class LossDicePlot(FigureCanvasQTAgg):
    """Loss per step (left axis) and validation Dice per epoch (right axis)."""

    #: at most one redraw per this many ms: an Agg redraw costs tens of ms of GUI time on 2 cores
    REDRAW_MS = 1000

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.figure = Figure(figsize=(3.2, 2.0), dpi=90)
        self.figure.subplots_adjust(left=0.16, right=0.84, bottom=0.2, top=0.95)  # fixed: no tight_layout per draw
        super().__init__(self.figure)
        self.ax_loss = self.figure.add_subplot(111)
        self.ax_dice = self.ax_loss.twinx()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.REDRAW_MS)
        self._timer.timeout.connect(self._draw)
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
        self._schedule()

    def add_dice(self, epoch: float, dice: float) -> None:
        """Add one validation-Dice point."""
        self.dice_x.append(epoch)
        self.dice_y.append(dice)
        self._schedule()

    def _schedule(self) -> None:
        """Redraw within ``REDRAW_MS`` (points arriving meanwhile share that redraw)."""
        if not self._timer.isActive():
            self._timer.start()

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
