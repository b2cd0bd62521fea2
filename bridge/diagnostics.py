"""The built-in diagnostics pack: plain metric code, so it shows, exports and replays like any user metric.

The torch metrics read the parameters of the bound optimizer (else `model`); outside torch, `lr` and
`steps_per_sec` still work.
"""

from __future__ import annotations

_PARAMS = (
    "params = [p for g in optimizer.param_groups for p in g['params']] if optimizer is not None"
    " else list(model.parameters())\n"
)

PACK: dict[str, str] = {
    "diag/grad_norm": _PARAMS + "sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]\n"
    "return torch.stack(sq).sum().sqrt() if sq else None\n",
    "diag/weight_norm": _PARAMS
    + "return torch.stack([p.detach().float().pow(2).sum() for p in params]).sum().sqrt()\n",
    "diag/update_ratio": _PARAMS + "cur = [p.detach().float().clone() for p in params]\n"
    "prev, state['prev'] = state.get('prev'), cur\n"
    "if prev is None:\n"
    "    return None\n"
    "delta = torch.stack([(c - q).pow(2).sum() for c, q in zip(cur, prev)]).sum().sqrt()\n"
    "return delta / (torch.stack([c.pow(2).sum() for c in cur]).sum().sqrt() + 1e-12)\n",
    "diag/lr": "if optimizer is None:\n"
    "    return hparams.get('lr')\n"
    "lrs = [float(g['lr']) for g in optimizer.param_groups]\n"
    "return lrs[0] if len(lrs) == 1 else {f'group{i}': v for i, v in enumerate(lrs)}\n",
    "diag/steps_per_sec": "bridge.steps_per_sec",
}
