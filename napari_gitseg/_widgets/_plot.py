"""A small live plot of training loss and validation Dice (pyqtgraph, as cellpose's GUI uses).

matplotlib cost 40-60 ms of GUI-thread time per redraw on 2 cores (measured), the largest
stall while a round ran; pyqtgraph updates its curves in about a millisecond.
"""

from __future__ import annotations

import pyqtgraph as pg
from qtpy.QtWidgets import QVBoxLayout, QWidget

_GREY, _GREEN = (170, 170, 170), (44, 160, 44)


class LossDicePlot(QWidget):
    """Loss per step (top) and validation Dice per epoch (bottom), sharing the epoch axis."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._view = pg.GraphicsLayoutWidget()
        self._view.setMinimumHeight(170)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._view)
        self._loss_plot = self._view.addPlot(row=0, col=0)
        self._dice_plot = self._view.addPlot(row=1, col=0)
        self._dice_plot.setXLink(self._loss_plot)
        self._loss_plot.setLabel("left", "loss", color="#aaaaaa")
        self._dice_plot.setLabel("left", "val Dice", color="#2ca02c")
        self._dice_plot.setLabel("bottom", "epoch")
        self._dice_plot.setYRange(0, 1, padding=0.02)
        self._loss_plot.hideAxis("bottom")
        for plot in (self._loss_plot, self._dice_plot):
            plot.getAxis("left").enableAutoSIPrefix(False)
            plot.getAxis("left").setWidth(48)  # both plots' axes line up
        self._loss_curve = self._loss_plot.plot([], [], pen=pg.mkPen(_GREY, width=1))
        self._dice_curve = self._dice_plot.plot(
            [], [], pen=pg.mkPen(_GREEN, width=2), symbol="o", symbolSize=6, symbolBrush=_GREEN, symbolPen=None
        )
        self._hint = pg.TextItem(
            "loss and validation Dice appear here during a round", color=(140, 140, 140), anchor=(0.5, 0.5)
        )
        self._loss_plot.addItem(self._hint)
        self._hint.setPos(0.5, 0.5)
        self.clear()

    def clear(self) -> None:
        """Forget all points (a new round starts)."""
        self.loss_x: list[float] = []
        self.loss_y: list[float] = []
        self.dice_x: list[float] = []
        self.dice_y: list[float] = []
        self._hint.setVisible(True)
        self._loss_plot.setXRange(0, 1, padding=0)
        self._loss_plot.setYRange(0, 1, padding=0)
        self._update()

    def add_loss(self, epoch_fraction: float, loss: float) -> None:
        """Add one training-loss point (x in epochs)."""
        self.loss_x.append(float(epoch_fraction))
        self.loss_y.append(float(loss))
        self._update()

    def add_dice(self, epoch: float, dice: float) -> None:
        """Add one validation-Dice point."""
        self.dice_x.append(float(epoch))
        self.dice_y.append(float(dice))
        self._update()

    def _update(self) -> None:
        self._loss_curve.setData(self.loss_x, self.loss_y)
        self._dice_curve.setData(self.dice_x, self.dice_y)
        if self.loss_x or self.dice_x:
            self._hint.setVisible(False)
            self._loss_plot.enableAutoRange()
            self._dice_plot.enableAutoRange(axis="x")
