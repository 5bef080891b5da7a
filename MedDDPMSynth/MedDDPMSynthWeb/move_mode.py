"""The page's move mode: a left drag in a slice view moves the tumour in that view's plane, a slider scales
it, with the clipped preview, Apply and Cancel; everything through :class:`.session.WebSession` (i.e. the
scene logic's begin/set/preview/apply/cancel move). No algorithm here: the drag only turns two pointer
positions into a RAS vector with the slice node's XY->RAS matrix.

The browser's pointer reaches the views as VTK interactor events (trame-slicer's remote rendering), so
the drag is read there: observers with a priority above the slice view's own interactor style, active
only in move mode, that stop the event (no window/level or paint while dragging the tumour).
"""

from __future__ import annotations

import time

import numpy as np

from MedDDPMSynthLib.errors import MedDDPMError

PRIORITY = 100.0  # before vtkMRMLSliceViewInteractorStyle (priority 0)
PREVIEW_S = 0.25  # while dragging, at most one clipped preview per this many seconds; always one at release


class MoveMode:
    def __init__(self, app):
        self.app = app
        self.observers: list[tuple[object, int]] = []
        self.drag = None  # (view, RAS where the drag started, translation before it)
        self.last_preview = 0.0
        ctrl = app.server.controller
        ctrl.synth_move_begin = self.begin
        ctrl.synth_move_apply = self.apply
        ctrl.synth_move_cancel = self.cancel
        app.state.change("synth_move_scale")(self.on_scale)

    @property
    def session(self):
        return self.app.session

    # ------------------------------------------------------------------------------- buttons

    def begin(self) -> None:
        try:
            self.session.begin_move()
        except MedDDPMError as error:
            self.app._show(error=str(error))
            return
        self._observe()
        with self.app.state:  # pushed now: the slider starts from 1 for every move
            self.app.state.update({"synth_moving": True, "synth_move_scale": 1.0})
            self.app._show()

    def apply(self) -> None:
        try:
            self.session.apply_move()
        except MedDDPMError as error:  # e.g. the whole tumour outside the head: the move stays, to correct
            self.app._show(error=str(error))
            return
        self._end()

    def cancel(self) -> None:
        self.session.cancel_move()
        self._end()

    def on_scale(self, synth_move_scale=1.0, **_kwargs) -> None:
        if not self.session.moving:
            return
        try:
            self.session.set_move(scale=float(synth_move_scale))
        except (TypeError, ValueError, MedDDPMError) as error:
            self.app._show(error=f"scale: {error}")
            return
        self.session.preview_move()
        self.app._show()

    def _end(self) -> None:
        for interactor, tag in self.observers:
            interactor.RemoveObserver(tag)
        self.observers, self.drag = [], None
        with self.app.state:
            self.app.state.synth_moving = False
            self.app._show()

    # --------------------------------------------------------------------------------- drag

    def _observe(self) -> None:
        if self.observers:
            return
        for view in self.app.slicer_app.view_manager.get_slice_views():
            interactor = view.interactor()
            for event, handler in (("LeftButtonPressEvent", self._press), ("MouseMoveEvent", self._move),
                                   ("LeftButtonReleaseEvent", self._release)):
                holder = {}

                def callback(caller, _event, view=view, handler=handler, holder=holder):
                    if handler(view, caller):
                        caller.GetCommand(holder["tag"]).SetAbortFlag(1)  # the drag is ours alone

                holder["tag"] = interactor.AddObserver(event, callback, PRIORITY)
                self.observers.append((interactor, holder["tag"]))

    @staticmethod
    def _ras(view, interactor) -> np.ndarray:
        x, y = interactor.GetEventPosition()
        return np.array(view.get_view_node().GetXYToRAS().MultiplyPoint((float(x), float(y), 0.0, 1.0))[:3])

    def _press(self, view, interactor) -> bool:
        if not self.session.moving:
            return False
        self.drag = (view, self._ras(view, interactor), np.array(self.session.move_translation))
        return True

    def _move(self, view, interactor) -> bool:
        if self.drag is None or self.drag[0] is not view:
            return False
        self._follow(view, interactor, time.monotonic() - self.last_preview >= PREVIEW_S)
        return True

    def _release(self, view, interactor) -> bool:
        if self.drag is None:
            return False
        self._follow(view, interactor, True)
        self.drag = None
        self.app._show()
        return True

    def _follow(self, view, interactor, preview: bool) -> None:
        """The transform follows the pointer in the view's plane (the XY->RAS of the slice node)."""
        _, start, before = self.drag
        self.session.set_move(translation_ras=before + self._ras(view, interactor) - start)
        if preview:
            self.session.preview_move()
            self.last_preview = time.monotonic()
        view.schedule_render()
