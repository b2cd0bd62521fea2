// Metrics: the active metrics with status, a chart of each (its whole series from the event files, then the
// recent values the bridge reports; a histogram metric as its mean with the min-max range) and the last error; the
// add form with a live syntax check; the diagnostics pack; export and import of metric sets (the format of
// `bidviz metric export`).

import {errorText, getJson} from './api.js';
import {Chart} from './charts.js';
import {downloadText, downloadUrl, el, formatValue, section} from './dom.js';

const isSummary = (v) => v !== null && typeof v === 'object' && 'mean' in v;

// The user's line an error points at, as `line N: <its text>`, when the error names one inside `code`.
export function userLine(error, code) {
  const n = error && Number.isInteger(error.line) ? error.line : null;
  if (n === null) return '';
  const text = String(code || '').split('\n')[n - 1];
  return text === undefined ? `line ${n}` : `line ${n}: ${text.trim()}`;
}

// An error as one line: type, message and the user's line.
export function errorLine(error, code) {
  const where = userLine(error, code);
  return `${error.type || 'Error'}: ${error.message || ''}${where ? ` (${where})` : ''}`;
}

// Tab indents, Shift+Tab dedents, Enter keeps the line's indentation (and adds one level after a colon).
export function attachCodeEditing(area) {
  area.addEventListener('keydown', (e) => {
    const {selectionStart: start, selectionEnd: end, value} = area;
    if (e.key === 'Tab') {
      e.preventDefault();
      const lineStart = value.lastIndexOf('\n', start - 1) + 1;
      if (e.shiftKey) {
        const removable = value.slice(lineStart, lineStart + 4).match(/^ */)[0].length;
        area.setRangeText('', lineStart, lineStart + removable, 'preserve');
      } else if (start === end) {
        area.setRangeText('    ', start, end, 'end');
      } else {
        const block = value.slice(lineStart, end).replace(/^/gm, '    ');
        area.setRangeText(block, lineStart, end, 'select');
      }
      area.dispatchEvent(new Event('input'));
    } else if (e.key === 'Enter' && !e.shiftKey && !e.ctrlKey && !e.metaKey && area.dataset.autoindent !== 'off') {
      const lineStart = value.lastIndexOf('\n', start - 1) + 1;
      const line = value.slice(lineStart, start);
      let indent = line.match(/^ */)[0];
      if (/:\s*$/.test(line)) indent += '    ';
      e.preventDefault();
      area.setRangeText(`\n${indent}`, start, end, 'end');
      area.dispatchEvent(new Event('input'));
    }
  });
}

// A value as the tab shows it: a histogram's summary (mean and range), or the value.
function formatShown(v) {
  return isSummary(v) ? `mean ${formatValue(v.mean)} [${formatValue(v.min)}, ${formatValue(v.max)}]` : formatValue(v);
}

export class MetricsPanel {
  constructor(app) {
    this.app = app;
    this.rows = new Map();
    this.list = el('div', {class: 'metric-list', testid: 'metric-list'});
    this.empty = el('p', {class: 'muted', text: 'No metrics yet: add one below, or switch on the diagnostics pack.'});
    this.name = el('input', {type: 'text', testid: 'metric-name', placeholder: 'name, e.g. grad_norm'});
    this.code = el('textarea', {
      testid: 'metric-code',
      class: 'code',
      rows: 5,
      spellcheck: false,
      placeholder: 'an expression, e.g. loss.item()\nor a body that returns the value:\nw = model[0].weight\nreturn w.norm().item()',
    });
    attachCodeEditing(this.code);
    this.every = el('input', {type: 'number', testid: 'metric-every', min: '1', value: '1', class: 'every'});
    this.replace = el('input', {type: 'checkbox', testid: 'metric-replace'});
    // Its options come from GET kinds (setKinds), as do the metric-set format and the add_metric defaults.
    this.kind = el('select', {testid: 'metric-kind', title: 'how the value is written'});
    this.table = null;
    this.syntax = el('div', {class: 'inline-msg error', testid: 'metric-code-error'});
    this.status = el('div', {class: 'inline-msg', testid: 'metric-add-status'});
    this.addButton = el('button', {testid: 'metric-add', text: 'Add metric', onclick: () => this.add()});
    this.diagButton = el('button', {
      class: 'secondary',
      testid: 'metric-diagnostics',
      text: 'Add diagnostics pack',
      title: 'loss, gradient and weight norms, update ratios, learning rate… as diag/* series',
      onclick: () => this.diagnostics(),
    });
    this.importInput = el('input', {
      type: 'file',
      accept: 'application/json,.json',
      testid: 'metric-import',
      hidden: true,
      onchange: () => this.importFile(),
    });
    let timer = null;
    this.code.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.checkSyntax(), 250);
    });
    this.element = section(
      'Metrics',
      'metrics',
      this.list,
      this.empty,
      el(
        'div',
        {class: 'add-form'},
        el('h3', {text: 'Add a metric'}),
        el(
          'div',
          {class: 'form-row'},
          el('label', {}, 'Name ', this.name),
          el('label', {}, 'every ', this.every, ' steps'),
          el('label', {}, 'as ', this.kind),
          el('label', {class: 'check'}, this.replace, ' replace'),
        ),
        this.code,
        this.syntax,
        el(
          'div',
          {class: 'form-row'},
          this.addButton,
          this.diagButton,
          el('button', {class: 'secondary', testid: 'metric-export', text: 'Export set', onclick: () => this.exportSet()}),
          el('button', {
            class: 'secondary',
            testid: 'metric-import-button',
            text: 'Import set…',
            onclick: () => this.importInput.click(),
          }),
          this.importInput,
        ),
        this.status,
      ),
    );
    this.state = null;
  }

  async checkSyntax() {
    const code = this.code.value;
    if (!code.trim()) {
      this.syntax.textContent = '';
      return true;
    }
    try {
      const result = await this.app.api.postJson('check', {code});
      if (code !== this.code.value) return true; // typed on meanwhile; the next check decides
      this.syntax.textContent = result.ok ? '' : `line ${result.line ?? '?'}: ${result.error}`;
      return result.ok;
    } catch (e) {
      this.syntax.textContent = '';
      return true; // the bridge checks again; do not block on a failed check
    }
  }

  say(text, error = false) {
    this.status.textContent = text;
    this.status.className = error ? 'inline-msg error' : 'inline-msg';
  }

  async add() {
    const name = this.name.value.trim();
    const code = this.code.value;
    const every = Number(this.every.value || 1);
    if (!name) return this.say('give the metric a name', true);
    if (!code.trim()) return this.say('type the code that computes the metric', true);
    if (!Number.isInteger(every) || every < 1) return this.say('"every" must be a whole number ≥ 1', true);
    this.addButton.disabled = true;
    this.say('sending…');
    try {
      const args = {name, code, every, kind: this.kind.value, replace: this.replace.checked};
      const resp = await this.app.send('add_metric', args);
      const result = resp.result && typeof resp.result === 'object' ? resp.result : {};
      const at = `at step ${resp.step ?? '–'}`;
      if (resp.status === 'applied' && result.first_error) {
        // Installed but paused: the form keeps the code, set to replace it, so fixing it is one edit and a click.
        this.say(
          `metric ${name} added ${at} but failed at its first run: ${errorLine(result.first_error, code)}\n` +
            'It stays installed, paused: fix the code and add it again (replace is ticked), Resume it as it is, or Remove it.',
          true,
        );
        this.replace.checked = true;
      } else if (resp.status === 'applied') {
        const first = 'first_value' in result ? `; first value ${formatShown(result.first_value)}` : '';
        this.say(`metric ${name} added ${at}${first}; its series is bidviz/${name}`);
        this.name.value = '';
        this.code.value = '';
        this.syntax.textContent = '';
      } else {
        this.say(errorText(resp.error) || resp.status, true);
      }
    } catch (e) {
      this.say(e.message, true);
    } finally {
      this.addButton.disabled = false;
      this.app.refreshSoon();
    }
  }

  async diagnostics() {
    const every = Math.max(1, Number(this.every.value || 1));
    this.say('adding the diagnostics pack…');
    try {
      const resp = await this.app.send('add_diagnostics', {every});
      this.say(resp.status === 'applied' ? `diagnostics on: ${resp.repr ?? ''}` : errorText(resp.error), resp.status !== 'applied');
    } catch (e) {
      this.say(e.message, true);
    }
    this.app.refreshSoon();
  }

  // The kinds table: the metric kinds for the <select>, the metric-set format, add_metric's argument defaults.
  setKinds(table) {
    this.table = table;
    const addMetric = table.kinds.find((k) => k.kind === 'add_metric');
    this.defaults = Object.fromEntries(addMetric.args.filter((a) => !a.required).map((a) => [a.name, a.default]));
    const kindArg = addMetric.args.find((a) => a.name === 'kind');
    this.kind.title = kindArg.help;
    const chosen = this.kind.value || this.defaults.kind;
    this.kind.replaceChildren(...table.metric_kinds.map((k) => el('option', {value: k, text: k})));
    this.kind.value = chosen;
  }

  // A metric set as `bidviz metric export` writes it: {<key>: <version>, metrics: [{<fields>}]}.
  metricSet() {
    const {key, version, fields, rule_fields: ruleFields} = this.table.metric_set;
    const metrics = Object.entries((this.state && this.state.metrics) || {}).map(([name, m]) =>
      Object.fromEntries(fields.map((f) => [f, f === 'name' ? name : m[f] ?? this.defaults[f] ?? null])),
    );
    // The run's live rules go with its metrics, as `bidviz metric export` writes them.
    const rules = Object.entries((this.state && this.state.rules) || {}).map(([name, r]) =>
      Object.fromEntries(ruleFields.map((f) => [f, f === 'name' ? name : r[f] ?? null])),
    );
    return rules.length ? {[key]: version, metrics, rules} : {[key]: version, metrics};
  }

  exportSet() {
    if (!this.table) return this.say('the metric-set format has not loaded yet; try again in a moment', true);
    const set = this.metricSet();
    const metrics = set.metrics;
    const text = `${JSON.stringify(set, null, 2)}\n`;
    downloadText(text, `metrics-${this.app.run().replace(/[^\w.-]+/g, '_')}.json`);
    this.say(`exported ${metrics.length} metric(s)`);
  }

  async importFile() {
    const file = this.importInput.files[0];
    this.importInput.value = '';
    if (!file) return;
    if (!this.table) return this.say('the metric-set format has not loaded yet; try again in a moment', true);
    const {key, version, fields} = this.table.metric_set;
    let metrics;
    let rules = [];
    try {
      const data = JSON.parse(await file.text());
      if (!data || data[key] !== version || !Array.isArray(data.metrics)) throw new Error('not a metric set');
      metrics = data.metrics.filter((m) => m && typeof m === 'object');
      rules = Array.isArray(data.rules) ? data.rules.filter((r) => r && typeof r === 'object') : [];
    } catch (e) {
      return this.say(`${file.name} is not a metric set as "Export set" or \`bidviz metric export\` writes it (${e.message})`, true);
    }
    const failed = [];
    for (const r of rules) metrics.push({...r, isRule: true});
    for (const m of metrics) {
      // The set's fields as they are (the bridge validates them and fills in defaults), replacing a namesake.
      const keys = m.isRule ? this.table.metric_set.rule_fields : fields;
      const args = Object.fromEntries(keys.filter((f) => m[f] !== undefined && m[f] !== null).map((f) => [f, m[f]]));
      args.replace = true;
      try {
        const resp = await this.app.send(m.isRule ? 'add_rule' : 'add_metric', args);
        const first = resp.result && typeof resp.result === 'object' ? resp.result.first_error : null;
        if (resp.status !== 'applied') failed.push(`${m.name}: ${errorText(resp.error)}`);
        else if (first) failed.push(`${m.name}: added, paused: failed at its first run: ${errorLine(first, m.code)}`);
      } catch (e) {
        failed.push(`${m.name}: ${e.message}`);
      }
    }
    this.say(
      failed.length
        ? `imported ${metrics.length - failed.length} of ${metrics.length}; failed: ${failed.join('; ')}`
        : `imported ${metrics.length} metric(s) from ${file.name}`,
      failed.length > 0,
    );
    this.app.refreshSoon();
  }

  row(name) {
    let row = this.rows.get(name);
    if (row) return row;
    const act = (kind, label) =>
      el('button', {
        class: 'small secondary',
        testid: `metric-${label.toLowerCase()}-${name}`,
        text: label,
        onclick: async () => {
          try {
            const resp = await this.app.send(kind, {name});
            if (resp.status !== 'applied') this.say(errorText(resp.error), true);
          } catch (e) {
            this.say(e.message, true);
          }
          this.app.refreshSoon();
        },
      });
    const chart = new Chart({title: `bidviz/${name}`, testid: `metric-chart-${name}`, height: 130});
    const cells = {
      status: el('span', {class: 'badge', testid: `metric-status-${name}`}),
      every: el('span', {class: 'muted'}),
      value: el('span', {class: 'value', testid: `metric-value-${name}`}),
      step: el('span', {class: 'muted'}),
      code: el('pre', {class: 'code-preview'}),
      error: el('details', {class: 'error-box', testid: `metric-error-${name}`}),
    };
    const pause = act('pause_metric', 'Pause');
    const resume = act('resume_metric', 'Resume');
    const remove = act('remove_metric', 'Remove');
    const png = el('button', {
      class: 'small secondary',
      testid: `metric-png-${name}`,
      text: 'PNG',
      title: 'download this chart as PNG',
      onclick: async () => {
        if (!chart.plot) await chart.draw(); // uPlot still loading: draw first, then export
        const url = chart.png();
        if (url) downloadUrl(url, `${name.replace(/[^\w.-]+/g, '_')}.png`);
      },
    });
    const element = el(
      'div',
      {class: 'metric-row', testid: `metric-row-${name}`},
      el(
        'div',
        {class: 'metric-head'},
        el('span', {class: 'name', text: name}),
        cells.status,
        cells.every,
        cells.value,
        cells.step,
        el('span', {class: 'spacer'}),
        pause,
        resume,
        remove,
        png,
      ),
      chart.element,
      el('details', {class: 'code-box'}, el('summary', {text: 'code'}), cells.code),
      cells.error,
    );
    row = {element, cells, chart, pause, resume, history: null, loading: false, points: []};
    this.rows.set(name, row);
    this.list.append(element);
    return row;
  }

  // The metric's whole series so far, read once from the event files as soon as the run lists its tag (asking
  // before would only earn a 404); the live server's stream has it already.
  async loadHistory(name, row) {
    const run = this.app.run();
    const tag = `bidviz/${name}`;
    if (row.loading || row.history !== null || !this.app.hasTag(tag)) return;
    row.loading = true;
    try {
      const data = await getJson('data', {run, tag, format: 'json'});
      row.history = data.points.map((p) => [p.step, typeof p.value === 'number' ? p.value : null]);
      this.draw(name, row);
    } catch (_) {
      row.history = []; // not a scalar (a histogram): the recent values only
    }
  }

  draw(name, row) {
    const run = this.app.run();
    const recent = row.points;
    if (recent.length && isSummary(recent[recent.length - 1][1])) {
      row.chart.set([{label: name, band: true, points: recent}]);
      return;
    }
    const streamed = this.app.streamedPoints && this.app.streamedPoints(run, `bidviz/${name}`);
    if (!streamed) this.loadHistory(name, row);
    let points = streamed || row.history || [];
    const last = points.length ? points[points.length - 1][0] : -Infinity;
    points = points.concat(recent.filter(([s, v]) => s > last && typeof v === 'number'));
    row.chart.set([{label: name, points}]);
  }

  update(state, live = 'live') {
    this.state = state;
    const metrics = (state && state.metrics) || {};
    for (const [name, row] of this.rows) {
      if (!(name in metrics)) {
        row.element.remove();
        this.rows.delete(name);
      }
    }
    for (const [name, m] of Object.entries(metrics)) {
      const row = this.row(name);
      const ended = live !== 'live';
      const status = ended && (m.status || 'running') === 'running' ? live : m.status || 'running';
      row.cells.status.textContent = status;
      row.cells.status.className = `badge ${status}`;
      row.cells.every.textContent = `every ${m.every || 1}`;
      const v = m.last_value;
      row.cells.value.textContent = formatShown(v);
      row.cells.step.textContent = m.last_step !== null && m.last_step !== undefined ? `@ ${m.last_step}` : '';
      if (row.cells.code.textContent !== m.code) row.cells.code.textContent = m.code || '';
      row.points = m.recent || [];
      this.draw(name, row);
      row.pause.hidden = status !== 'running';
      row.resume.hidden = status === 'running' || ended;
      const first = m.first_error;
      const err = first || m.last_error;
      row.cells.error.hidden = !err;
      if (err) {
        const summary = first
          ? `failed at its first run (step ${first.step ?? '–'}), so it is paused: ${errorLine(first, m.code)}`
          : `${m.error_count || 1} error(s); last: ${errorLine(err, m.code)}`;
        const text = errorText(err);
        if (row.errorText !== summary + text) {
          const open = row.cells.error.open;
          row.cells.error.replaceChildren(el('summary', {text: summary}), el('pre', {class: 'traceback', text}));
          row.cells.error.open = open;
          row.errorText = summary + text;
        }
      }
    }
    this.empty.hidden = this.rows.size > 0;
  }

  setEnabled(enabled) {
    for (const b of this.element.querySelectorAll('button')) b.disabled = !enabled;
  }
}
