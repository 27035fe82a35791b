#!/usr/bin/env python3
"""Hoist the step-invariant cross-attention work out of an optimum merged decoder.

Usage: hoist_cross_attention.py SRC_DIR DST_DIR

SRC_DIR is an optimum `image-to-text-with-past` export (encoder_model.onnx,
decoder_model_merged.onnx, the JSON files). GPT-2's cross-attention projects the encoder states to
keys and values at every decoder step, although they never change while one batch is decoded (the
KV cache holds only self-attention). This tool moves every computation that depends on the values
of `encoder_hidden_states` and on nothing that changes between steps into a separate graph,
`decoder_cross_model.onnx` (input `encoder_hidden_states`, outputs `hoisted.0..N`), and rewrites
the merged decoder to take those tensors as inputs `hoisted.<n>` instead of recomputing them. The
runner (functions/engines/captioning/src/model/onnx.rs) runs the cross graph once per batch and feeds its
outputs at every step.

Nothing here is model-specific: invariant tensors are `encoder_hidden_states`, initializers,
Constant outputs, and outputs of nodes (without subgraphs) whose inputs are all invariant; a node
is hoisted when it is invariant and depends on the *values* of `encoder_hidden_states` (through
something other than `Shape`): shape arithmetic stays in the decoder, where it is cheap, so every
hoisted output is a batch-major tensor. Both branches of the `use_cache_branch` If are hoisted;
computations that are the same in both (same ops, attributes, constants and initializers) become
one output. The contract the runner relies on, checked numerically here before anything is
written: every `hoisted.*` output has the batch as its first axis and its rows depend only on the
matching rows of the encoder states, so rows can be selected instead of recomputed; and the
(cross graph, rewritten decoder) pair gives the original decoder's outputs.

Needs the `onnx` and `onnxruntime` packages (the repository's .venv has both).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper, shape_inference

ENCODER_STATES = "encoder_hidden_states"
MERGED = "decoder_model_merged.onnx"
CROSS = "decoder_cross_model.onnx"
PREFIX = "hoisted."
TOLERANCE = 1e-4


def key(node: onnx.NodeProto) -> tuple[str, ...]:
    """A node's identity within its graph: its outputs (SSA: no two nodes share one). Python
    wrapper objects of protobuf messages are not stable, so id() cannot serve."""
    return tuple(node.output)


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


class Scope:
    """One graph (the main graph or an If branch) and what its tensors are made of."""

    def __init__(self, graph: onnx.GraphProto, outer: "Scope | None", label: str):
        self.graph = graph
        self.outer = outer
        self.label = label
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.inits = {i.name for i in graph.initializer}
        self.inputs = {i.name for i in graph.input}
        # tensor name -> structural signature (None: not invariant)
        self.sig: dict[str, str | None] = {}
        # tensors whose value depends on the values (not only the shape) of the encoder states
        self.value_dep: dict[str, bool] = {}

    def defined_here(self, name: str) -> bool:
        return name in self.producer or name in self.inits or name in self.inputs

    def signature(self, name: str) -> str | None:
        """A hash of how an invariant tensor is computed; None when it is not invariant."""
        if name in self.sig:
            return self.sig[name]
        if not self.defined_here(name):
            return self.outer.signature(name) if self.outer else None
        if name in self.inputs:
            s = "E" if name == ENCODER_STATES else None
        elif name in self.inits:
            s = "I:" + name
        else:
            node = self.producer[name]
            s = None
            if not has_subgraph(node):
                parts = [node.op_type, node.domain, str(list(node.output).index(name))]
                parts += [a.SerializeToString(deterministic=True).hex() for a in node.attribute]
                ok = True
                for i in node.input:
                    if not i:
                        parts.append("-")
                        continue
                    si = self.signature(i)
                    if si is None:
                        ok = False
                        break
                    parts.append(si)
                if ok:
                    s = hashlib.sha256("|".join(parts).encode()).hexdigest()
        self.sig[name] = s
        return s

    def depends_on_values(self, name: str) -> bool:
        """Whether an invariant tensor depends on the values of the encoder states."""
        if not self.defined_here(name):
            return self.outer.depends_on_values(name) if self.outer else False
        if name not in self.value_dep:
            if name in self.inputs:
                dep = name == ENCODER_STATES
            elif name in self.inits or self.producer[name].op_type == "Shape":
                dep = False
            else:
                dep = any(i and self.depends_on_values(i) for i in self.producer[name].input)
            self.value_dep[name] = dep
        return self.value_dep[name]


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a graph or its subgraphs read."""
    out = set()
    for n in graph.node:
        out.update(i for i in n.input if i)
        for a in n.attribute:
            if a.type == AttributeProto.GRAPH:
                out |= used_names(a.g)
                out.update(o.name for o in a.g.output)
            elif a.type == AttributeProto.GRAPHS:
                for g in a.graphs:
                    out |= used_names(g)
                    out.update(o.name for o in g.output)
    return out


def scopes_of(main: onnx.GraphProto) -> list[Scope]:
    """The main graph and the branches of its If nodes (one level, as optimum merges)."""
    root = Scope(main, None, "main")
    scopes = [root]
    for node in main.node:
        if node.op_type == "If":
            for a in node.attribute:
                if a.type == AttributeProto.GRAPH:
                    scopes.append(Scope(a.g, root, f"{node.name or 'If'}.{a.name}"))
    return scopes


def hoist(model: onnx.ModelProto):
    main = model.graph
    if ENCODER_STATES not in {i.name for i in main.input}:
        sys.exit(f"{MERGED} has no input {ENCODER_STATES}")
    if not any(n.op_type == "If" and list(n.input) == ["use_cache_branch"] for n in main.node):
        sys.exit(f"{MERGED} has no If node on use_cache_branch")
    scopes = scopes_of(main)
    for s in scopes:
        print(f"{s.label}: {len(s.graph.node)} nodes, {len(s.graph.initializer)} initializers")

    # Hoisted nodes per scope: invariant and depending on the encoder states' values.
    hoisted: dict[str, list[onnx.NodeProto]] = {}
    for s in scopes:
        hoisted[s.label] = [
            n
            for n in s.graph.node
            if n.op_type != "Constant"
            and not has_subgraph(n)
            and all(s.signature(o) is not None for o in n.output if o)
            and any(s.depends_on_values(o) for o in n.output if o)
        ]

    # Frontier: hoisted tensors read by a node that stays, by a subgraph, or a graph output.
    frontier_sigs: list[str] = []
    renames: dict[str, dict[str, str]] = {}  # scope label -> old name -> hoisted.<n>
    for s in scopes:
        gone = {key(n) for n in hoisted[s.label]}
        produced = {o for n in hoisted[s.label] for o in n.output if o}
        readers = set()
        for n in s.graph.node:
            if key(n) in gone:
                continue
            readers.update(i for i in n.input if i)
            for a in n.attribute:
                if a.type == AttributeProto.GRAPH:
                    readers |= used_names(a.g)
                    readers.update(o.name for o in a.g.output)
        readers.update(o.name for o in s.graph.output)
        renames[s.label] = {}
        for n in s.graph.node:
            if key(n) not in gone:
                continue
            for o in n.output:
                if o and o in readers:
                    sig = s.signature(o)
                    if sig not in frontier_sigs:
                        frontier_sigs.append(sig)
                    renames[s.label][o] = f"{PREFIX}{frontier_sigs.index(sig)}"
        assert produced >= set(renames[s.label])
    if not frontier_sigs:
        sys.exit("nothing to hoist: no computation depends only on the encoder states")
    return scopes, hoisted, frontier_sigs, renames


def build_cross(model, scopes, hoisted, frontier_sigs):
    """The cross graph: each distinct hoisted computation once, tensors named by signature."""
    main = model.graph
    canonical = {sig: f"{PREFIX}{k}" for k, sig in enumerate(frontier_sigs)}

    def cname(scope: Scope, name: str) -> str:
        if name == ENCODER_STATES:
            return name
        sig = scope.signature(name)
        if sig.startswith("I:"):
            return sig[2:]
        return canonical.get(sig, "t." + sig[:16])

    nodes, done, inits_needed = [], set(), set()

    def emit(scope: Scope, name: str):
        """Emits the node producing `name` (and, first, its inputs) unless already emitted."""
        sig = scope.signature(name)
        if sig == "E" or sig in done:
            return
        if sig.startswith("I:"):
            inits_needed.add(sig[2:])
            done.add(sig)
            return
        owner = scope
        while not owner.defined_here(name):
            owner = owner.outer
        node = owner.producer[name]
        for i in node.input:
            if i:
                emit(owner, i)
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = "cross." + owner.signature(name)[:16]
        del new.input[:]
        new.input.extend(cname(owner, i) if i else "" for i in node.input)
        del new.output[:]
        new.output.extend(cname(owner, o) if o else "" for o in node.output)
        nodes.append(new)
        for o in node.output:
            if o:
                done.add(owner.signature(o))

    by_sig = {}
    for s in scopes:
        for n in hoisted[s.label]:
            for o in n.output:
                if o:
                    by_sig.setdefault(s.signature(o), (s, o))
    for sig in frontier_sigs:
        scope, name = by_sig[sig]
        emit(scope, name)

    states = next(i for i in main.input if i.name == ENCODER_STATES)
    initializers = [i for i in main.initializer if i.name in inits_needed]
    outputs = [helper.make_empty_tensor_value_info(canonical[s]) for s in frontier_sigs]
    graph = helper.make_graph(nodes, "decoder_cross", [states], outputs, initializers)
    cross = helper.make_model(graph, opset_imports=list(model.opset_import))
    cross.ir_version = model.ir_version
    inferred = shape_inference.infer_shapes(cross)
    types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in cross.graph.output:
        t = types.get(out.name)
        if t is None or not t.tensor_type.elem_type:
            sys.exit(f"shape inference gave no type for {out.name}")
        out.type.CopyFrom(t)
    return cross


def keep_only(field, keep) -> None:
    """Deletes the elements of a repeated field for which `keep` is false, in place. Clearing and
    re-extending would copy the If node and detach the branch graphs the scopes point into."""
    for k in reversed([k for k, item in enumerate(field) if not keep(item)]):
        del field[k]


def rewrite_decoder(model, scopes, hoisted, renames, cross):
    """Removes the hoisted nodes and reads their frontier tensors from new inputs."""
    for s in scopes:
        gone = {key(n) for n in hoisted[s.label]}
        keep_only(s.graph.node, lambda n: key(n) not in gone)
        # Branches read the main graph's hoisted tensors under their new names too.
        ren = {**renames["main"], **renames[s.label]}
        for n in s.graph.node:
            for k, i in enumerate(n.input):
                if i in ren:
                    n.input[k] = ren[i]
        # A graph output that was hoisted is passed through under its own name.
        for out in s.graph.output:
            if out.name in ren:
                s.graph.node.append(helper.make_node("Identity", [ren[out.name]], [out.name]))
        # Drop value_info of tensors that no longer exist here.
        keep_only(s.graph.value_info, lambda v: v.name not in ren)
    # Dead nodes: those only the hoisted nodes read (shape arithmetic, constants).
    changed = True
    while changed:
        changed = False
        live = used_names(model.graph) | {o.name for o in model.graph.output}
        for s in scopes:
            outs = {o.name for o in s.graph.output}
            before = len(s.graph.node)
            keep_only(
                s.graph.node,
                lambda n: has_subgraph(n) or any(o in live or o in outs for o in n.output if o),
            )
            changed |= len(s.graph.node) != before
    main = model.graph
    main.input.extend(cross.graph.output)
    used = used_names(main)
    before = len(main.initializer)
    keep_only(main.initializer, lambda i: i.name in used)
    # The encoder states stay an input while anything still reads them (their shape, at least).
    keep_only(main.input, lambda i: i.name != ENCODER_STATES or i.name in used)
    return before - len(main.initializer)


def tensor_bytes(t: onnx.TensorProto) -> int:
    return numpy_helper.to_array(t).nbytes


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def dims_of(arg, fixed: dict[str, int]) -> list[int]:
    out = []
    for d in arg.shape:
        out.append(d if isinstance(d, int) else fixed.get(str(d), 2))
    return out


def vocab_size(session, src: Path) -> int:
    """The decoder's vocabulary size: the last axis of its logits, or config.json's decoder
    vocab_size where that axis is symbolic. Token ids fed to the decoder must be below it (its
    embedding Gather refuses any other)."""
    logits = next((o for o in session.get_outputs() if o.name == "logits"), None)
    if logits is not None and isinstance(logits.shape[-1], int) and logits.shape[-1] > 0:
        return logits.shape[-1]
    config_path = src / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    size = config.get("decoder", {}).get("vocab_size") or config.get("vocab_size")
    if not size:
        sys.exit(f"cannot tell the vocabulary size: the logits' last axis is {logits and logits.shape[-1]!r} "
                 f"and {config_path} has no decoder.vocab_size")
    return int(size)


def self_check(src: Path, dst: Path) -> None:
    """Original decoder vs (cross graph -> rewritten decoder), one no-cache and one cache step."""
    rng = np.random.default_rng(0)
    original = ort_session(src / MERGED)
    cross = ort_session(dst / CROSS)
    rewritten = ort_session(dst / MERGED)
    ins = {i.name: i for i in original.get_inputs()}
    states_dims = dims_of(ins[ENCODER_STATES], {})
    batch = 2
    states_dims[0] = batch
    if states_dims[1] <= 0 or not isinstance(ins[ENCODER_STATES].shape[1], int):
        states_dims[1] = 5
    states = rng.standard_normal(states_dims).astype(np.float32)
    past_names = [n for n in ins if n.startswith("past_key_values.")]
    heads, head_dim = ins[past_names[0]].shape[1], ins[past_names[0]].shape[3]
    # Ids from the model's own vocabulary: a tiny export may have fewer than 50 tokens.
    vocab = vocab_size(original, src)

    hoisted = dict(zip([o.name for o in cross.get_outputs()], cross.run(None, {ENCODER_STATES: states})))
    # The runner selects rows of hoisted tensors instead of recomputing them: check that is right.
    perm = [1, 0, 1]
    again = dict(zip(hoisted, cross.run(None, {ENCODER_STATES: states[perm]})))
    for name, value in hoisted.items():
        if value.ndim == 0 or value.shape[0] != batch:
            sys.exit(f"{name} {value.shape} does not have the batch as its first axis")
        if not np.allclose(value[perm], again[name], atol=TOLERANCE, rtol=0):
            sys.exit(f"{name}: rows depend on other rows of the encoder states")

    def feeds(cached: bool, seq: int, past_len: int) -> dict:
        f = {
            "input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64),
            ENCODER_STATES: states,
            "use_cache_branch": np.array([cached]),
        }
        for n in past_names:
            f[n] = rng.standard_normal((batch, heads, past_len, head_dim)).astype(np.float32)
        if "cache_position" in ins:
            start = past_len if cached else 0
            f["cache_position"] = np.arange(start, start + seq, dtype=np.int64)
        return f

    new_inputs = {i.name for i in rewritten.get_inputs()}
    worst = 0.0
    for cached, seq, past_len in [(False, 3, 1), (True, 1, 3)]:
        f = feeds(cached, seq, past_len)
        want = original.run(None, f)
        g = {k: v for k, v in {**f, **hoisted}.items() if k in new_inputs}
        got = rewritten.run([o.name for o in original.get_outputs()], g)
        for o, a, b in zip(original.get_outputs(), want, got):
            if a.shape != b.shape:
                sys.exit(f"{o.name}: shape {b.shape}, expected {a.shape}")
            d = float(np.max(np.abs(a - b))) if a.size else 0.0
            worst = max(worst, d)
            if d > TOLERANCE:
                sys.exit(f"{o.name} (use_cache_branch={cached}) differs by {d}")
    print(f"self-check: outputs match the original decoder (max |d| {worst:.2e}), "
          f"hoisted tensors are batch-major and row-independent")


def main() -> None:
    # Signatures recurse along the decoder's residual stream, hundreds of nodes deep.
    sys.setrecursionlimit(100_000)
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    if src.resolve() == dst.resolve():
        sys.exit("SRC_DIR and DST_DIR must differ")
    model = onnx.load(str(src / MERGED))
    scopes, hoisted, frontier_sigs, renames = hoist(model)
    cross = build_cross(model, scopes, hoisted, frontier_sigs)
    init_bytes_before = {i.name: tensor_bytes(i) for i in model.graph.initializer}
    dropped = rewrite_decoder(model, scopes, hoisted, renames, cross)
    kept = {i.name for i in model.graph.initializer}
    dup = sum(tensor_bytes(i) for i in cross.graph.initializer if i.name in kept)
    moved = sum(b for n, b in init_bytes_before.items() if n not in kept)

    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in (MERGED, CROSS):
            shutil.copyfile(f, dst / f.name)
    onnx.save(cross, str(dst / CROSS))
    onnx.save(model, str(dst / MERGED))
    # The path-based checker handles models of any size.
    onnx.checker.check_model(str(dst / CROSS), full_check=True)
    onnx.checker.check_model(str(dst / MERGED), full_check=True)

    for s in scopes:
        print(f"{s.label}: hoisted {len(hoisted[s.label])} nodes, {len(renames[s.label])} of them "
              f"read afterwards, {len(s.graph.node)} nodes left")
    print(f"cross graph: {len(cross.graph.node)} nodes, {len(frontier_sigs)} outputs "
          f"({', '.join(o.name for o in cross.graph.output[:4])}{', ...' if len(frontier_sigs) > 4 else ''})")
    print(f"weights: {moved / 2**20:.1f} MB moved out of the decoder ({dropped} initializers), "
          f"{dup / 2**20:.1f} MB duplicated in both graphs")
    self_check(src, dst)


if __name__ == "__main__":
    main()
