"""Write a diffusers StableDiffusionPipeline folder out as an original LDM single-file checkpoint.

The key layout is the inverse of what diffusers' single-file loader
(`diffusers.loaders.single_file_utils`: convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint)
undoes:

- UNet:  model.diffusion_model.{input_blocks,middle_block,output_blocks,time_embed,out}.*
- VAE:   first_stage_model.{encoder,decoder}.{down,mid,up}.*, attention q/k/v/proj_out as 1x1 convs
- text:  SD 1.x  cond_stage_model.transformer.text_model.*           (Hugging Face CLIP)
         SD 2.x  cond_stage_model.model.{token_embedding,positional_embedding,ln_final,text_projection,
                 transformer.resblocks.N.{ln_1,ln_2,attn.in_proj_*,attn.out_proj,mlp.c_fc,mlp.c_proj}}  (OpenCLIP)
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer."
OPEN_CLIP = "cond_stage_model.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet(rest: str, names: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{names.get(head, head)}.{tail}"


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel weights -> LDM `model.diffusion_model.*` weights."""
    per = config["layers_per_block"] + 1  # LDM blocks per resolution level (resnets + down/up sampler slot)
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            new = f"{_UNET_TOP[module]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, l, rest = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + b * per + l}.0.{_resnet(rest, _UNET_RESNET)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2], _UNET_RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{_resnet(m[3], _UNET_RESNET)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            new = f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            new = f"output_blocks.{b * per + per - 1}.{2 if up_has_attn[b] else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no LDM name for UNet weight {key}")
        out[UNET + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL weights -> LDM `first_stage_model.*` weights."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        elif re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(.+)|(post_)?quant_conv\.(.+)", key):
            new = key
        else:
            raise KeyError(f"no LDM name for VAE weight {key}")
        out[VAE + new] = value
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face CLIPTextModel weights -> SD 1.x `cond_stage_model.transformer.text_model.*`."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    # SD 1.x files carry the position_ids buffer that older transformers saved; newer ones must ignore it
    state.setdefault("embeddings.position_ids", torch.arange(state["embeddings.position_embedding.weight"].shape[0])[None])
    return {CLIP + "text_model." + k: v for k, v in state.items()}


def open_clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face CLIPTextModel weights -> SD 2.x OpenCLIP `cond_stage_model.model.*`."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    hidden = state["embeddings.token_embedding.weight"].shape[1]
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        # stored as (width, embed_dim); unused by SD 2.x, diffusers reads only its width
        "text_projection": torch.eye(hidden),
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([state.pop(src + f"self_attn.{p}_proj.{kind}") for p in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[dst + f"{b}.{kind}"] = state.pop(src + f"{a}.{kind}")
    state.pop("embeddings.position_ids", None)
    if state:
        raise KeyError(f"no OpenCLIP name for text encoder weights {sorted(state)}")
    return {OPEN_CLIP + k: v for k, v in out.items()}


def ldm_state_dict(pipe, text_layout: str = "clip") -> dict[str, torch.Tensor]:
    """The whole pipeline as one LDM state dict; text_layout "clip" (SD 1.x) or "open_clip" (SD 2.x)."""
    state = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    text = pipe.text_encoder.state_dict()
    state.update(clip_to_ldm(text) if text_layout == "clip" else open_clip_to_ldm(text))
    # the noise schedule buffers an LDM checkpoint carries next to the weights
    sched = pipe.scheduler
    state["betas"] = sched.betas.clone()
    state["alphas_cumprod"] = sched.alphas_cumprod.clone()
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def write_ldm_checkpoint(folder: Path, out: Path, text_layout: str | None = None) -> Path:
    """Save the diffusers pipeline `folder` as the LDM checkpoint `out` (.safetensors or .ckpt)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    if text_layout is None:
        text_layout = "open_clip" if pipe.unet.config.use_linear_projection else "clip"
    state = ldm_state_dict(pipe, text_layout)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out))
    else:
        torch.save({"state_dict": state, "global_step": 0}, str(out))
    return out


def config_folder(folder: Path, out: Path) -> Path:
    """A copy of the diffusers folder with its configs and tokenizer but without any weights."""
    weights = (".safetensors", ".bin", ".ckpt", ".pt")
    shutil.copytree(folder, out, ignore=lambda _d, names: [n for n in names if n.endswith(weights)])
    return out
