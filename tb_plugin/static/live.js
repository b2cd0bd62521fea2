// Live mode (`bidviz serve`): a Server-Sent Events stream per followed run (state, journal entries, new scalar
// points, new tags), read with fetch so that the control token travels as a header like on every other request;
// and the charts of every scalar series of the run, grouped by tag prefix, with other runs overlaid.

import {ApiError, errorOf, withToken} from './api.js';
import {Chart} from './charts.js';
import {el, section} from './dom.js';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Parse `event: NAME\ndata: JSON\n\n` blocks as they arrive; reconnect with backoff when the stream ends.
export class RunStream {
  constructor(run, onEvent, onTrouble) {
    this.run = run;
    this.onEvent = onEvent;
    this.onTrouble = onTrouble;
    this.abort = new AbortController();
    this.closed = false;
    this.loop();
  }

  async loop() {
    let wait = 250;
    while (!this.closed) {
      try {
        const resp = await fetch(`./events?${new URLSearchParams({run: this.run})}`, {
          headers: withToken({Accept: 'text/event-stream'}),
          signal: this.abort.signal,
        });
        if (!resp.ok) throw await errorOf(resp);
        this.onTrouble(null);
        wait = 250;
        await this.read(resp.body.getReader());
      } catch (e) {
        if (this.closed) return;
        this.onTrouble(e);
        if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 429) wait = 10000;
      }
      await sleep(wait);
      wait = Math.min(wait * 2, 15000);
    }
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = 'message';
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) name = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (data) this.onEvent(name, JSON.parse(data));
      }
    }
  }

  close() {
    this.closed = true;
    this.abort.abort();
  }
}

// Every run's streamed series: run -> tag -> [[step, value], ...].
export class SeriesStore {
  constructor() {
    this.runs = new Map();
  }

  apply(run, data) {
    if (data.reset || !this.runs.has(run)) this.runs.set(run, new Map());
    const tags = this.runs.get(run);
    for (const [tag, points] of Object.entries(data.points)) {
      const list = tags.get(tag) || [];
      for (const [step, , value] of points) list.push([step, typeof value === 'number' ? value : null]);
      tags.set(tag, list);
    }
    return Object.keys(data.points);
  }

  points(run, tag) {
    const tags = this.runs.get(run);
    return tags ? tags.get(tag) || null : null;
  }

  tags(run) {
    const tags = this.runs.get(run);
    return tags ? [...tags.keys()].sort() : [];
  }
}

const prefixOf = (tag) => (tag.includes('/') ? tag.slice(0, tag.indexOf('/')) : '(no prefix)');
// The bridge's own series (hyperparameters as set, metrics added from here) come after the run's own.
const BRIDGE_PREFIXES = ['bidviz', 'hparams'];
const groupKey = (prefix) => `${BRIDGE_PREFIXES.includes(prefix) ? 1 : 0}${prefix}`;

export class ChartsPanel {
  constructor(app) {
    this.app = app;
    this.charts = new Map(); // tag -> {chart, group}
    this.groups = new Map(); // prefix -> {details, grid}
    this.dirty = new Set();
    this.frame = 0;
    this.filter = el('input', {type: 'text', testid: 'chart-filter', placeholder: 'filter tags', oninput: () => this.redrawAll()});
    this.smoothing = el('input', {type: 'range', testid: 'chart-smoothing', min: '0', max: '0.99', step: '0.01', value: '0', oninput: () => this.redrawAll()});
    this.smoothText = el('span', {class: 'muted', text: '0'});
    this.log = el('input', {type: 'checkbox', testid: 'chart-log', onchange: () => this.redrawAll()});
    this.compare = el('select', {multiple: true, testid: 'compare-runs', size: 1, 'aria-label': 'runs to overlay', onchange: () => this.app.followCompared()});
    this.body = el('div', {class: 'chart-groups', testid: 'chart-groups'});
    this.empty = el('p', {class: 'muted', text: 'No scalar series in this run yet.'});
    this.element = section(
      'Charts',
      'charts',
      el(
        'div',
        {class: 'form-row chart-controls'},
        this.filter,
        el('label', {}, 'smoothing ', this.smoothing, ' ', this.smoothText),
        el('label', {class: 'check'}, this.log, ' log scale'),
        el('label', {}, 'overlay runs ', this.compare),
        el('span', {class: 'muted', text: 'drag to zoom, double-click to reset'}),
      ),
      this.empty,
      this.body,
    );
    // When each series' newest point was drawn: {tag: {step, at}}, and the last draws in order (the latency benchmark).
    window.bidvizLatest = {};
    window.bidvizDrawn = [];
  }

  setRuns(runs, selected) {
    const chosen = new Set(this.comparedRuns());
    const names = runs.map((r) => r.run).filter((r) => r !== selected);
    if (names.join('\n') === [...this.compare.options].map((o) => o.value).join('\n')) return;
    this.compare.replaceChildren(...names.map((r) => el('option', {value: r, text: r, selected: chosen.has(r)})));
    this.compare.size = Math.min(4, Math.max(1, names.length));
  }

  comparedRuns() {
    return [...this.compare.selectedOptions].map((o) => o.value);
  }

  reset() {
    this.charts.clear();
    this.groups.clear();
    this.body.replaceChildren();
  }

  changed(tags) {
    for (const tag of tags) this.dirty.add(tag);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  redrawAll() {
    this.smoothText.textContent = Number(this.smoothing.value).toFixed(2);
    for (const tag of this.app.store.tags(this.app.run())) this.dirty.add(tag);
    for (const tag of this.charts.keys()) this.dirty.add(tag);
    this.changed([]);
  }

  group(prefix) {
    let group = this.groups.get(prefix);
    if (!group) {
      const grid = el('div', {class: 'chart-grid'});
      const details = el('details', {open: true, class: 'chart-group', testid: `chart-group-${prefix}`}, el('summary', {text: prefix}), grid);
      group = {details, grid};
      this.groups.set(prefix, group);
      const later = [...this.groups.keys()].filter((p) => groupKey(p) > groupKey(prefix));
      const after = later.sort((p, q) => (groupKey(p) < groupKey(q) ? -1 : 1)).map((p) => this.groups.get(p).details)[0];
      this.body.insertBefore(details, after || null);
    }
    return group;
  }

  flush() {
    this.frame = 0;
    const run = this.app.run();
    const store = this.app.store;
    const filter = this.filter.value.trim().toLowerCase();
    const options = {smoothing: Number(this.smoothing.value), log: this.log.checked};
    const runs = [run, ...this.comparedRuns()];
    for (const tag of this.dirty) {
      const lines = runs
        .map((r) => ({label: r, points: store.points(r, tag)}))
        .filter((l) => l.points && l.points.length);
      let entry = this.charts.get(tag);
      if (!entry) {
        if (!lines.length) continue;
        const chart = new Chart({title: tag, testid: `chart-${tag}`, height: 170, stepped: tag.startsWith('hparams/')});
        const group = this.group(prefixOf(tag));
        group.grid.append(chart.element);
        entry = {chart, group};
        this.charts.set(tag, entry);
      }
      entry.chart.element.hidden = Boolean(filter) && !tag.toLowerCase().includes(filter);
      if (entry.chart.element.hidden) continue;
      const own = store.points(run, tag) || [];
      entry.chart.set(lines, options).then(() => {
        if (!own.length) return;
        const drawn = {tag, step: own[own.length - 1][0], at: Date.now()};
        window.bidvizLatest[tag] = drawn;
        window.bidvizDrawn.push(drawn);
        if (window.bidvizDrawn.length > 20000) window.bidvizDrawn.splice(0, 10000);
      });
    }
    this.dirty.clear();
    this.empty.hidden = this.charts.size > 0;
  }
}
