"""from-hf refuses a source tensor holding NaN/inf (naming it, writing nothing) unless --allow-nonfinite."""
from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from megafin.convert.cli import main as convert_main


def test_nonfinite_weight_is_refused_by_name(hf_models, tmp_path, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(hf_models["untied"], hf)
    key = "model.layers.1.mlp.down_proj.weight"
    shard = hf / json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"][key]
    tensors = load_file(shard)
    tensors[key][3, 5] = float("nan")
    tensors[key][0, 0] = float("inf")
    save_file(tensors, shard, metadata={"format": "pt"})
    out = tmp_path / "out"
    assert convert_main(["from-hf", "--hf", str(hf), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"megafin convert: error: {shard}: tensor {key} has 2 NaN/inf values of {tensors[key].numel()} "
                   f"(pass --allow-nonfinite to convert it anyway)"]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert convert_main(["from-hf", "--hf", str(hf), "--out", str(out), "--allow-nonfinite"]) == 0
    assert (out / "megafin.json").is_file()
    # The values are carried as they are, not repaired.
    from megafin.convert.dcp_reader import DistCheckpointReader

    assert not torch.isfinite(DistCheckpointReader(out).read("decoder.layers.mlp.linear_fc2.weight", layer=1)).all()
