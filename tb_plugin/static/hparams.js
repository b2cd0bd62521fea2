// Hyperparameters: a row per registered value, with its bounds, an input and an apply button.

import {errorText} from './api.js';
import {el, formatValue, section} from './dom.js';

function bounds(hp) {
  if (Array.isArray(hp.choices)) return `one of ${hp.choices.map(formatValue).join(', ')}`;
  const lo = hp.min ?? null;
  const hi = hp.max ?? null;
  if (lo !== null && hi !== null) return `${formatValue(lo)} … ${formatValue(hi)}`;
  if (lo !== null) return `≥ ${formatValue(lo)}`;
  if (hi !== null) return `≤ ${formatValue(hi)}`;
  return '–';
}

// The JSON value to send for what the user typed: numbers for numeric types, booleans for bool; the bridge
// coerces and range-checks, and answers with a message when the value does not fit.
export function parseInput(text, type) {
  const t = text.trim();
  if (type === 'bool') {
    if (/^(true|1|yes|on)$/i.test(t)) return true;
    if (/^(false|0|no|off)$/i.test(t)) return false;
    return t;
  }
  if (type === 'str') return text;
  if (t !== '' && Number.isFinite(Number(t))) return Number(t);
  try {
    return JSON.parse(t);
  } catch (_) {
    return t;
  }
}

export class HParamsPanel {
  constructor(app) {
    this.app = app;
    this.rows = new Map();
    this.body = el('tbody');
    this.empty = el('p', {class: 'muted', text: 'No hyperparameters registered.'});
    this.element = section(
      'Hyperparameters',
      'hparams',
      el(
        'table',
        {class: 'grid'},
        el(
          'thead',
          {},
          el('tr', {}, ['Name', 'Value', 'Bounds', 'New value', '', 'Changed at'].map((h) => el('th', {text: h}))),
        ),
        this.body,
      ),
      this.empty,
    );
  }

  row(name, hp) {
    let row = this.rows.get(name);
    if (row) return row;
    const input = el('input', {
      type: 'text',
      testid: `hparam-input-${name}`,
      placeholder: 'value',
      'aria-label': `new value of ${name}`,
      onkeydown: (e) => e.key === 'Enter' && apply(),
    });
    const button = el('button', {class: 'small', testid: `hparam-apply-${name}`, text: 'Apply', onclick: () => apply()});
    const message = el('div', {class: 'inline-msg', testid: `hparam-error-${name}`});
    const apply = async () => {
      if (!input.value.trim()) {
        message.textContent = 'type a value first';
        message.className = 'inline-msg error';
        return;
      }
      const value = parseInput(input.value, row.type);
      button.disabled = true;
      message.className = 'inline-msg';
      message.textContent = 'sending…';
      try {
        const resp = await this.app.send('set_hparam', {name, value}, (id, live) => {
          if (live !== 'live') message.textContent = `queued: the bridge is ${live}`;
        });
        if (resp.status === 'applied') {
          const r = resp.result && typeof resp.result === 'object' ? resp.result : {};
          const was = 'old' in r ? ` (was ${formatValue(r.old)})` : '';
          message.textContent = `set to ${formatValue('value' in r ? r.value : value)}${was} at step ${resp.step ?? '–'}`;
          input.value = '';
        } else {
          message.className = 'inline-msg error';
          message.textContent = errorText(resp.error) || resp.status;
        }
      } catch (e) {
        message.className = 'inline-msg error';
        message.textContent = e.message;
      } finally {
        button.disabled = false;
        this.app.refreshSoon();
      }
    };
    const cells = {value: el('td', {class: 'num', testid: `hparam-value-${name}`}), bounds: el('td', {class: 'nowrap'}), changed: el('td')};
    const tr = el(
      'tr',
      {testid: `hparam-row-${name}`},
      el('td', {class: 'name', text: name}),
      cells.value,
      cells.bounds,
      el('td', {}, input, message),
      el('td', {}, button),
      cells.changed,
    );
    row = {tr, cells, input, type: hp.type};
    this.rows.set(name, row);
    this.body.append(tr);
    return row;
  }

  update(state) {
    const hparams = (state && state.hparams) || {};
    for (const [name, row] of this.rows) {
      if (!(name in hparams)) {
        row.tr.remove();
        this.rows.delete(name);
      }
    }
    for (const [name, hp] of Object.entries(hparams)) {
      const row = this.row(name, hp);
      row.type = hp.type;
      row.cells.value.textContent = formatValue(hp.value);
      row.cells.bounds.textContent = bounds(hp);
      if (!row.input.value && document.activeElement !== row.input) row.input.placeholder = formatValue(hp.value);
      const changes = hp.changes || [];
      const last = changes[changes.length - 1];
      row.cells.changed.textContent = last ? `step ${last.step ?? '–'} by ${last.sender || '?'}` : '–';
    }
    this.empty.hidden = this.rows.size > 0;
  }

  setEnabled(enabled) {
    for (const row of this.rows.values()) {
      row.input.disabled = !enabled;
      row.tr.querySelector('button').disabled = !enabled;
    }
  }
}
