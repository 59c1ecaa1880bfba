"""The model store: every network a restore needs, resolved, read, built and placed once.

A :class:`ModelStore` answers "the network for this spec" for the generator, the face detector, the face
parser and the background upsamplers. Each spec is resolved once (a download happens once), each
checkpoint is read once, and each network is built once, under a per-network lock, so one store serves
concurrent requests. Where the networks run is one :class:`gfp.devices.Placement`, decided when the store
is made and narrowed per network by :meth:`Placement.for_model` (float16 and bf16 only where the network
is measured good in them). The store also owns the OpenVINO choice: with the OpenVINO backend a network
already converted (in the cache on disk) is used at once; one not yet converted runs in PyTorch while a
low-priority process converts it (:func:`gfp.openvino.convert_in_background`), and the store switches to
the converted network when it is ready, so conversion never holds up a restore. An optional network
whose weights cannot be had is remembered as :class:`Unavailable` (an offline machine does not retry).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from gfp import openvino, registry
from gfp.archs import FacesOnly, GeneratorConfig
from gfp.background import BackgroundUpsampler, build_background_upsampler
from gfp.devices import Placement
from gfp.loading import (
    Network,
    generator_network,
    generator_weights,
    load_model,
    model_network,
    read_generator,
)
from gfp.messages import headline
from gfp.paste import PARSE_SIZE
from gfp.weights.errors import CheckpointError, WeightsError
from gfp.weights.resolve import Resolved, cache_dir, resolve

T = TypeVar("T")
FaceNetwork = Callable[[Tensor], Tensor]
"""Aligned faces → restored faces, float32 (B, 3, S, S) RGB in [-1, 1], in the network's placement."""

CONVERT_ENV = "GFP_OPENVINO_CONVERT"
"""How a network missing from the OpenVINO cache is converted: "background" (default: PyTorch meanwhile)
or "now" (convert before the first call, as a benchmark of the converted network wants)."""


@dataclass(frozen=True)
class Unavailable:
    """An optional model whose weights cannot be had: its name and the error that says where we looked."""

    name: str
    error: WeightsError

    @property
    def reason(self) -> str:
        """The first line of the error (without the list of places looked)."""
        return headline(self.error).rstrip(".")

    def note(self, what: str, instead: str) -> str:
        """A one-line note for the result: what was unavailable, why, and what was done instead."""
        return f"{what} unavailable ({self.reason}); {instead}"


class _Checkpoint:
    """A generator's weights read once: its config stays, its tensors are handed to the first build.

    ``mapped`` (for OpenVINO, whose converted network may serve without a build): the file is
    memory-mapped, so its values are read only if a build asks, and the build gets them copied, so that a
    file rewritten in place cannot change or crash a loaded network. Otherwise it is read whole (cheaper
    than mapping and copying when a build follows).

    ``stamp`` is the file's :func:`gfp.openvino.stamp` while it was read (None: it changed meanwhile), which
    its OpenVINO conversion is looked up by: a file replaced later is not the network this one builds.
    """

    def __init__(self, found: Resolved, mapped: bool) -> None:
        self.mapped = mapped
        before = _stamp(found.path)
        self.found = found
        self.state_dict, self.config = generator_weights(found, mapped)
        self.stamp = before if before is not None and _stamp(found.path) == before else None

    def network(self, placement: Placement) -> Network:
        """The PyTorch generator built on ``placement`` with the tensors, which it takes (read again if
        already handed over or released: only a rare second build asks)."""
        state_dict, self.state_dict = self.state_dict, None
        if state_dict is None:
            state_dict = generator_weights(self.found)[0]
        elif self.mapped:
            state_dict = {key: tensor.clone() for key, tensor in state_dict.items()}
        return generator_network(state_dict, self.config, self.found, placement)

    def release(self) -> None:
        """Drop the tensors: a converted network serves, so no PyTorch build will take them."""
        self.state_dict = None


class ModelStore:
    """Networks by spec, made once each and shared by threads; see the module docstring.

    ``weights_dir`` is searched first for weights (:mod:`gfp.weights.resolve`); ``placement`` (None: the
    CPU in float32 with PyTorch) is where every network runs; ``convert`` says when a network missing from
    the OpenVINO cache is converted (None: env ``GFP_OPENVINO_CONVERT``, else "background").
    """

    def __init__(
        self,
        weights_dir: str | os.PathLike[str] | None = None,
        placement: Placement | None = None,
        convert: str | None = None,
    ) -> None:
        self.weights_dir = weights_dir
        self.placement = placement or Placement()
        self.convert = (convert or os.environ.get(CONVERT_ENV) or "background").strip().lower()
        if self.convert not in ("background", "now") and self.placement.backend == "openvino":
            # checked only where it is used: a stale variable must not stop a PyTorch run; named, since the
            # command line does not show it
            where = "" if convert else f" (env {CONVERT_ENV})"
            raise ValueError(f"unknown conversion mode {self.convert!r}{where}: use background or now")
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Any] = {}
        self._item_locks: dict[tuple[str, str], threading.Lock] = {}

    def _get(self, key: tuple[str, str], make: Callable[[], T]) -> T:
        """The value for ``key``, made once by ``make`` (other keys keep loading in parallel)."""
        with self._lock:
            if key in self._items:
                return self._items[key]
            key_lock = self._item_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = make()
            with self._lock:
                self._items[key] = value
        return value

    def resolve(self, spec: str | os.PathLike[str]) -> Resolved:
        """Where the weights of ``spec`` are (found once per spelling; a download happens once)."""
        spec = os.fspath(spec)
        return self._get(("resolve", spec), lambda: resolve(spec, self.weights_dir))

    # ------------------------------------------------------------------------------------ generator
    def _checkpoint(self, spec: str | os.PathLike[str]) -> _Checkpoint:
        found = self.resolve(spec)
        mapped = self.placement.backend == "openvino"
        return self._get(("checkpoint", found.real), lambda: _Checkpoint(found, mapped))

    def generator_config(self, spec: str | os.PathLike[str]) -> GeneratorConfig:
        """The layout of a generator, from its config file or its weights' keys and shapes (raises what
        loading would, for missing or foreign weights)."""
        return self._checkpoint(spec).config

    def generator(self, spec: str | os.PathLike[str]) -> Network:
        """The GFPGAN generator module of a version / file / folder / repo id, in PyTorch."""
        checkpoint = self._checkpoint(spec)
        return self._get(("generator", checkpoint.found.real), lambda: checkpoint.network(self.placement))

    def face_network(self, spec: str | os.PathLike[str]) -> Network:
        """The generator as a :data:`FaceNetwork` in the store's backend: OpenVINO when converted (a cached
        conversion is used without building the PyTorch module), else PyTorch."""
        checkpoint = self._checkpoint(spec)
        return self._get(("faces", checkpoint.found.real), lambda: self._faces(spec, checkpoint))

    def _faces(self, spec: str | os.PathLike[str], checkpoint: _Checkpoint) -> Network:
        config = checkpoint.config
        supports = registry.generator_supports(config)
        placement = self.placement.for_model(supports)

        def torch_faces() -> FaceNetwork:
            net = self.generator(spec).run
            dtype = placement.dtype

            def faces(x: Tensor) -> Tensor:
                with placement.autocast():
                    return net(x.to(dtype), return_rgb=False)[0].float()

            return faces

        def module() -> nn.Module:
            return FacesOnly(self.generator(spec).run)

        path, size = str(checkpoint.found.path), config.out_size
        run = self._backend(path, "faces", module, torch_faces, size, placement, checkpoint.stamp)
        checkpoint.release()  # taken by the PyTorch build, or not needed: the conversion serves
        return Network(run, supports, placement, config)

    # ------------------------------------------------------------------------- registry networks
    def network(self, name: str) -> Network:
        """The registry model ``name`` (detector, parser, upsampler) with its weights, in PyTorch."""
        found = self.resolve(name)
        key = ("network", found.real)
        return self._get(key, lambda: model_network(found, self.placement))

    def optional(self, name: str) -> Network | Unavailable:
        """:meth:`network`, or :class:`Unavailable` when its weights cannot be had (remembered)."""

        def load() -> Network | Unavailable:
            try:
                return self.network(name)
            except WeightsError as err:
                return Unavailable(name, err)

        return self._get(("optional", name), load)

    def forget(self, *names: str) -> None:
        """Forget that the weights of the registry models ``names`` could not be had, so that they are looked
        for again: before a request that names one (the error it had said how to provide the file, which a
        shared store must then find without a restart). Networks loaded stay."""
        with self._lock:
            for key in [(kind, name) for name in names for kind in ("optional", "parser")]:
                if isinstance(self._items.get(key), Unavailable):
                    del self._items[key]

    def broken_generator(self, spec: str | os.PathLike[str], network: Network) -> CheckpointError:
        """The error of the generator ``spec`` whose ``network`` gave NaN or inf values (broken weights, or a
        damaged OpenVINO conversion of them), once the store has forgotten it (where it is, its checkpoint,
        its networks): the next request reads its file again, so that it serves once its file is replaced
        (or its conversion deleted), without a restart. Requests running keep the network they have."""
        with self._lock:
            found = self._items.pop(("resolve", os.fspath(spec)), None)
            if found is not None:
                for kind in ("checkpoint", "generator", "faces"):
                    self._items.pop((kind, found.real), None)
        text = f"the generator {os.fspath(spec)} gives NaN or inf values: its weights are broken"
        if network.placement.backend == "openvino":
            text += (
                ", or its OpenVINO conversion is damaged (delete the openvino folder of the model cache, "
                "GFP_CACHE_DIR or ~/.cache/gfp, to convert it again)"
            )
        return CheckpointError(text)

    def required(self, name: str) -> nn.Module:
        """The module of registry model ``name``; raises its :class:`WeightsError` when it cannot be had."""
        got = self.optional(name)
        if isinstance(got, Unavailable):
            raise got.error
        return got.run  # type: ignore[return-value]  (a registry network's run is its module)

    def detector(self, name: str) -> Network:
        """The face detector ``name`` with its weights."""
        return self.network(name)

    def parser(self, required: bool = False) -> Network | Unavailable:
        """ParseNet in the store's backend, or :class:`Unavailable` (raised instead when ``required``). As for
        the generator, a conversion OpenVINO has cached serves without the PyTorch network being built."""
        name = registry.DEFAULTS["parser"]
        if required:
            self.forget(name)
        got = self._get(("parser", name), lambda: self._parser(name))
        if isinstance(got, Unavailable) and required:
            raise got.error
        return got

    def _parser(self, name: str) -> Network | Unavailable:
        try:
            path = str(self.resolve(name).path)
        except WeightsError as err:
            return Unavailable(name, err)
        supports = registry.MODEL_ZOO[name].supports
        placement = self.placement.for_model(supports)

        def module() -> nn.Module:
            return self.required(name)  # a file that does not fit is unavailable too

        try:
            run = self._backend(path, "parser", module, module, PARSE_SIZE, placement, _stamp(path))
        except WeightsError as err:
            return Unavailable(name, err)
        return Network(run, supports, placement)

    def background(self, name: str, named: bool = False) -> BackgroundUpsampler | None:
        """The background upsampler for choice ``name`` (None for "none"); its networks load on first use
        (a network whose weights cannot be had raises then) and are shared with every other choice.
        ``named``: the request asked for it by name, so its networks that were missing are looked for again
        (a default one stays remembered as missing: its request falls back)."""
        if named:
            self.forget(*registry.members("upsampler", name))

        def build() -> BackgroundUpsampler | None:
            return build_background_upsampler(name, placement=self.placement, load=self.required)

        return self._get(("background", name), build)

    # ------------------------------------------------------------------------------------- OpenVINO
    def _backend(
        self,
        path: str,
        role: str,
        module: Callable[[], nn.Module],
        fallback: Callable[[], Callable[[Tensor], Any]],
        size: int,
        placement: Placement,
        stamp: openvino.Stamp | None,
    ) -> Callable[[Tensor], Any]:
        """The ``role`` network loaded from ``path`` in the store's backend: converted for OpenVINO when it is
        (or, with ``convert="now"``, once converted here), else ``fallback()`` in PyTorch, switching to the
        conversion a background process makes. A network OpenVINO cannot convert runs in PyTorch (warned).
        Conversions are looked up by ``stamp``, the file as it was read (see :class:`_Checkpoint`), so that
        one made of a file that replaced it meanwhile is not taken for it; None (it changed while it was
        read, or cannot be looked at): PyTorch only."""
        if placement.backend != "openvino" or stamp is None:
            return fallback()
        example = _example(size)
        try:
            options = _openvino_options(path, role, placement)
            if self.convert == "now":
                return openvino.compile_network(module, example, (0,), source=path, stamped=stamp, **options)
            found = openvino.cached_network(path, example, (0,), stamped=stamp, **options)
            if found is not None:
                return found
            cache = options["cache_dir"]
            started = openvino.convert_in_background(path, role, example, (0,), cache, stamped=stamp)
        except WeightsError:  # the network's own weights do not load (building it for a conversion): no
            raise  # OpenVINO fault, and PyTorch would fail alike
        except Exception as err:  # noqa: BLE001  (a foreign converter failed: use the reference path)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            warnings.warn(
                f"OpenVINO could not compile {Path(path).name} ({first}); it runs in PyTorch", stacklevel=4
            )
            return fallback()
        if not started:
            return fallback()

        def converted() -> openvino.OpenVINONetwork | None:
            found = openvino.cached_network(path, example, (0,), stamped=stamp, **options)
            if found is None:  # a conversion that died (killed, say) is started again
                openvino.convert_in_background(path, role, example, (0,), cache, stamped=stamp)
            return found

        return openvino.Switching(fallback(), converted)

    def prepare(self, version: str, batch: int, parser: bool) -> list[threading.Thread]:
        """Start loading the generator of ``version`` (and the face parser when ``parser``) in background
        threads, compiling their OpenVINO networks for a ``batch`` of faces; returns the threads.

        A call that needs a network meanwhile waits for it; an error is left for that call to report. The
        process does not exit before the threads finish.
        """

        def generator() -> None:
            net = self.face_network(version)
            if isinstance(net.run, openvino.OpenVINONetwork):
                net.run.prepare((batch, 3, net.config.out_size, net.config.out_size))

        def face_parser() -> None:
            found = self.parser()
            if isinstance(found, Network) and isinstance(found.run, openvino.OpenVINONetwork):
                found.run.prepare((batch, 3, PARSE_SIZE, PARSE_SIZE))

        def quietly(job: Callable[[], None]) -> None:
            with contextlib.suppress(Exception):  # reported by the call that needs the network
                job()

        jobs = [generator] + ([face_parser] if parser else [])
        # Not daemons: a process that ends first (no face found, a quick error) waits for them, since
        # interpreter teardown under a running OpenVINO compilation aborts the process.
        threads = [threading.Thread(target=quietly, args=(job,), name="gfp-prepare") for job in jobs]
        for thread in threads:
            thread.start()
        return threads


def converting(network: Network) -> bool:
    """Whether ``network`` runs in PyTorch while a background process converts it for OpenVINO (the first
    run with a model on a CPU): slower this once, which a caller says, so that it is not taken for the
    speed to expect."""
    return isinstance(network.run, openvino.Switching) and network.run.converted is None


def runs_in(network: Network) -> str:
    """What computes ``network`` now: "OpenVINO" (converted, or switched to its conversion) or "PyTorch"
    (the PyTorch backend, a network not converted yet, or one OpenVINO could not convert)."""
    run = network.run
    if isinstance(run, openvino.Switching):
        run = run.converted
    return "OpenVINO" if isinstance(run, openvino.OpenVINONetwork) else "PyTorch"


def _stamp(path: str | os.PathLike[str]) -> openvino.Stamp | None:
    """:func:`gfp.openvino.stamp`, or None where the file cannot be looked at (the read says why)."""
    try:
        return openvino.stamp(path)
    except OSError:
        return None


def _example(size: int) -> Tensor:
    """An input of the layout a network of ``size`` px converts for (only its shape matters)."""
    return torch.zeros(2, 3, size, size)


def _openvino_options(path: str, role: str, placement: Placement) -> dict[str, Any]:
    """What the OpenVINO cache knows a converted network by, beside its file and input layout."""
    return {"bf16": placement.bf16, "cache_dir": cache_dir(), "name": Path(path).name, "role": role}


def conversion_network(role: str, source: str) -> nn.Module:
    """The PyTorch network a background conversion converts: the ``role`` network built from ``source``
    (float32 on the CPU, as the store's own conversion sees it)."""
    if role == "faces":
        state_dict, config, found = read_generator(source)
        return FacesOnly(generator_network(state_dict, config, found).run)
    if role == "parser":
        return load_model(source)
    raise ValueError(f"unknown network role {role!r}")
