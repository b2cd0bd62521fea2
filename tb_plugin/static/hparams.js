// Hyperparameters: a row per registered value, with its bounds, an input and an apply button; "Apply all" sends
// every edited row as one set_hparam (the bridge applies all of them at one step, or none, naming each refusal).

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

// What an applied change says: the value the bridge set (its `result`: {name, value, old}), what it was, the step.
function changed(result, sent, step) {
  const r = result && typeof result === 'object' ? result : {};
  const was = 'old' in r ? ` (was ${formatValue(r.old)})` : '';
  return `set to ${formatValue('value' in r ? r.value : sent)}${was} at step ${step ?? '–'}`;
}

export class HParamsPanel {
  constructor(app) {
    this.app = app;
    this.rows = new Map();
    this.enabled = true;
    this.body = el('tbody');
    this.empty = el('p', {class: 'muted', text: 'No hyperparameters registered.'});
    this.applyAllButton = el('button', {
      class: 'small',
      testid: 'hparam-apply-all',
      text: 'Apply all',
      title: 'every edited row as one change: applied together at one step, or none is',
      disabled: true,
      onclick: () => this.applyAll(),
    });
    this.allMessage = el('div', {class: 'inline-msg', testid: 'hparam-apply-all-status'});
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
      el('div', {class: 'form-row'}, this.applyAllButton, this.allMessage),
    );
  }

  // The rows with a typed value: [name, row].
  edited() {
    return [...this.rows].filter(([, row]) => row.input.value.trim());
  }

  countEdited() {
    const n = this.edited().length;
    this.applyAllButton.disabled = !this.enabled || n === 0;
    this.applyAllButton.textContent = n > 1 ? `Apply all (${n})` : 'Apply all';
  }

  // One set_hparam with `values`: on success every row says its new value and the common step; on a refusal
  // nothing changed, each refused row says why and the others say they were held back.
  async applyAll() {
    const edited = this.edited();
    if (!edited.length) return;
    const values = Object.fromEntries(edited.map(([name, row]) => [name, parseInput(row.input.value, row.type)]));
    this.applyAllButton.disabled = true;
    this.allMessage.className = 'inline-msg';
    this.allMessage.textContent = 'sending…';
    for (const [, row] of edited) row.say('');
    try {
      const resp = await this.app.send('set_hparam', {values}, (id, live) => {
        if (live !== 'live') this.allMessage.textContent = `queued: the bridge is ${live}`;
      });
      const names = edited.map(([name]) => name);
      if (resp.status === 'applied') {
        const results = resp.result && typeof resp.result === 'object' ? resp.result : {};
        for (const [name, row] of edited) {
          row.say(changed(results[name], values[name], resp.step));
          row.input.value = '';
        }
        this.allMessage.textContent = `${names.join(', ')} set together at step ${resp.step ?? '–'}`;
      } else {
        const refused = (resp.error && resp.error.refused) || {};
        for (const [name, row] of edited) {
          const why = refused[name];
          row.say(why ? `${why.type}: ${why.message}` : 'not applied: another value was refused', Boolean(why));
        }
        const bad = Object.keys(refused);
        this.allMessage.className = 'inline-msg error';
        this.allMessage.textContent = bad.length
          ? `nothing applied: refused ${bad.join(', ')}`
          : `nothing applied: ${errorText(resp.error) || resp.status}`;
      }
    } catch (e) {
      this.allMessage.className = 'inline-msg error';
      this.allMessage.textContent = e.message;
    } finally {
      this.countEdited();
      this.app.refreshSoon();
    }
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
      oninput: () => this.countEdited(),
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
          message.textContent = changed(resp.result, value, resp.step);
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
        this.countEdited();
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
    const say = (text, error = false) => {
      message.textContent = text;
      message.className = error ? 'inline-msg error' : 'inline-msg';
    };
    row = {tr, cells, input, type: hp.type, say};
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
    this.countEdited();
  }

  setEnabled(enabled) {
    this.enabled = enabled;
    for (const row of this.rows.values()) {
      row.input.disabled = !enabled;
      row.tr.querySelector('button').disabled = !enabled;
    }
    this.countEdited();
  }
}
