// Terminal: Python evaluated inside training (at the next step boundary, or at once with "now"), with history.

import {errorText} from './api.js';
import {attachCodeEditing} from './metrics.js';
import {el, section} from './dom.js';

const HISTORY_KEY = 'bidviz.terminal.history';
const HISTORY_KEPT = 200;

function loadHistory() {
  try {
    const h = JSON.parse(localStorage.getItem(HISTORY_KEY) || '[]');
    return Array.isArray(h) ? h.filter((x) => typeof x === 'string') : [];
  } catch (_) {
    return [];
  }
}

export class TerminalPanel {
  constructor(app) {
    this.app = app;
    this.history = loadHistory();
    this.cursor = this.history.length;
    this.draft = '';
    this.output = el('div', {class: 'terminal-output', testid: 'terminal-output', role: 'log', 'aria-live': 'polite'});
    this.input = el('textarea', {
      class: 'code terminal-input',
      testid: 'terminal-input',
      rows: 2,
      spellcheck: false,
      placeholder: 'Python, e.g. optimizer.param_groups[0]["lr"]   (Enter runs, Shift+Enter adds a line, ↑/↓ history)',
    });
    this.input.dataset.autoindent = 'off';
    attachCodeEditing(this.input);
    this.input.addEventListener('keydown', (e) => this.onKey(e));
    this.now = el('input', {type: 'checkbox', testid: 'terminal-now'});
    this.runButton = el('button', {testid: 'terminal-run', text: 'Run', onclick: () => this.run()});
    this.element = section(
      'Terminal',
      'terminal',
      this.output,
      el('div', {class: 'terminal-line'}, el('span', {class: 'prompt', text: '>>>'}), this.input),
      el(
        'div',
        {class: 'form-row'},
        this.runButton,
        el(
          'label',
          {class: 'check', title: 'evaluate at once from the bridge thread, without waiting for the next step'},
          this.now,
          ' now (do not wait for a step)',
        ),
        el('button', {class: 'secondary small', text: 'Clear', onclick: () => this.output.replaceChildren()}),
      ),
    );
  }

  onKey(e) {
    const {selectionStart, value} = this.input;
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      this.run();
    } else if (e.key === 'ArrowUp' && !value.slice(0, selectionStart).includes('\n') && this.cursor > 0) {
      e.preventDefault();
      if (this.cursor === this.history.length) this.draft = value;
      this.cursor -= 1;
      this.input.value = this.history[this.cursor];
    } else if (e.key === 'ArrowDown' && !value.slice(selectionStart).includes('\n') && this.cursor < this.history.length) {
      e.preventDefault();
      this.cursor += 1;
      this.input.value = this.cursor === this.history.length ? this.draft : this.history[this.cursor];
    }
  }

  remember(code) {
    if (this.history[this.history.length - 1] !== code) this.history.push(code);
    this.history = this.history.slice(-HISTORY_KEPT);
    this.cursor = this.history.length;
    this.draft = '';
    try {
      localStorage.setItem(HISTORY_KEY, JSON.stringify(this.history));
    } catch (_) {
      // storage full or disabled: history lasts for this page only
    }
  }

  print(cls, text, testid = null) {
    const entry = el('pre', {class: `term ${cls}`, text, testid});
    this.output.append(entry);
    this.output.scrollTop = this.output.scrollHeight;
    return entry;
  }

  // Answers arrive out of order when commands overlap: each replaces its own placeholder, under its own echo.
  settle(pending, cls, text, testid) {
    pending.className = `term ${cls}`;
    pending.dataset.testid = testid;
    pending.textContent = text;
    this.output.scrollTop = this.output.scrollHeight;
  }

  async run() {
    const code = this.input.value;
    if (!code.trim()) return;
    this.remember(code);
    this.input.value = '';
    this.print('echo', code.replace(/^/gm, '>>> ').replace(/\n>>> /g, '\n... '));
    const pending = this.print('pending', 'waiting for the next step…');
    try {
      const resp = await this.app.send('eval', {code, now: this.now.checked}, (id, live) => {
        if (live !== 'live') pending.textContent = `queued: the bridge is ${live}; it runs when training steps again`;
      });
      if (resp.status === 'applied') this.settle(pending, 'result', resp.repr ?? 'None', 'terminal-result');
      else this.settle(pending, 'error', errorText(resp.error) || resp.status, 'terminal-error');
    } catch (e) {
      this.settle(pending, 'error', e.message, 'terminal-error');
    }
  }

  setEnabled(enabled) {
    this.input.disabled = !enabled;
    this.runButton.disabled = !enabled;
  }
}
