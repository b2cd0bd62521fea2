"""Built-in live rules, as examples to copy: `bidviz rule add RUN NAME --example NAME` sends one as it is, and
`bidviz rule examples` prints them to adapt. Plain text: nothing here imports the bridge."""

from __future__ import annotations

#: name -> rule code (see `bidviz.bridge.rules` for what rule code sees and may do)
EXAMPLES: dict[str, str] = {
    "lr_plateau": (
        "# halve lr when the metric val_loss (add it first) has not improved by 1% for `patience` runs of this rule\n"
        "value, patience = metrics['val_loss'], 5\n"
        "best = state.get('best')\n"
        "if best is None or value < best * 0.99:\n"
        "    state['best'], state['waited'] = value, 0\n"
        "else:\n"
        "    state['waited'] = state.get('waited', 0) + 1\n"
        "    if state['waited'] >= patience:\n"
        "        state['waited'] = 0\n"
        "        set(lr=hparams['lr'] / 2)"
    ),
    "gnorm_spike": (
        "# pause when the gradient norm jumps over 10x its running mean (add it first: bidviz diagnostics RUN)\n"
        "g = metrics['diag/grad_norm']\n"
        "mean = state.get('mean', g)\n"
        "state['mean'] = 0.9 * mean + 0.1 * g\n"
        "if g > 10 * mean:\n"
        "    pause(f'grad_norm {g:.3g} is over 10x its running mean {mean:.3g}')"
    ),
}
