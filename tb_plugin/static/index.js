// The BIDViz tab. TensorBoard loads this module in an iframe and calls render(); it polls its runs and the
// selected run's state about every second, and also refreshes when TensorBoard says its data reloaded. `bidviz
// serve` calls render({live: true}): the selected run (and the runs overlaid on its charts) then come as a stream of
// events (live.js), and a Charts card shows every scalar series of the run. When the server is gone, polling backs
// off (up to every 30 s) and the page says so once.

import {Api, ApiError, download, getJson, tabLinkCommand} from './api.js';
import {el, formatAge, formatValue, section} from './dom.js';
import {HParamsPanel} from './hparams.js';
import {renderJournal} from './journal.js';
import {ChartsPanel, RunStream, SeriesStore} from './live.js';
import {MetricsPanel} from './metrics.js';
import {RulesPanel} from './rules.js';
import {TerminalPanel} from './terminal.js';

const POLL_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const JOURNAL_SHOWN = 200;
const RUNS_EVERY = 3; // polls
const RUN_KEY = 'bidviz.run';
const DONE = {pause: 'paused', resume: 'resumed', stop: 'stop requested: training ends at its next step'};

const ATTACH_HELP = `from bidviz import Bridge

bridge = Bridge("runs/my_run", namespace={"model": model})
bridge.bind_optimizer(optimizer)           # lr, momentum, ... become settable
for step, batch in enumerate(loader):
    loss = train_step(batch)
    bridge.step(step, loss=loss)
    if bridge.should_stop:
        break`;

class App {
  constructor(root, {live = false} = {}) {
    this.root = root;
    this.liveMode = live;
    this.failures = 0;
    this.journal = [];
    this.runs = [];
    this.selected = null;
    this.live = 'none';
    this.state = null;
    this.tick = 0;
    this.timer = null;
    this.inflight = false;
    this.controllable = null;
    this.api = new Api();
    this.kinds = null; // GET kinds: the command kinds, metric kinds and metric-set format, from the one table

    this.runSelect = el('select', {testid: 'run-select', 'aria-label': 'run', onchange: () => this.select(this.runSelect.value)});
    this.badge = el('span', {class: 'badge', testid: 'run-status'});
    this.stepText = el('span', {testid: 'run-step'});
    this.rateText = el('span', {testid: 'run-rate'});
    this.beatText = el('span', {testid: 'run-heartbeat'});
    this.whoText = el('span', {class: 'muted'});
    // A torch.distributed job: its world size and each rank's step, as the ranks last reported them.
    this.ranksText = el('span', {class: 'stat', testid: 'ranks', hidden: true});
    this.banner = el('div', {class: 'banner', testid: 'banner', hidden: true});
    this.help = el(
      'div',
      {class: 'help', testid: 'attach-help', hidden: true},
      el('p', {testid: 'attach-help-text'}),
      el('pre', {class: 'code-preview', text: ATTACH_HELP}),
    );

    this.pauseButton = el('button', {testid: 'pause', text: 'Pause', onclick: () => this.control('pause')});
    this.resumeButton = el('button', {testid: 'resume', text: 'Resume', onclick: () => this.control('resume')});
    this.stopButton = el('button', {class: 'danger', testid: 'stop', text: 'Stop…', onclick: () => this.confirmStop(true)});
    this.stopConfirm = el(
      'div',
      {class: 'confirm', testid: 'stop-confirmation', hidden: true},
      el('span', {text: 'Stop training? The script ends the run at its next step (bridge.should_stop).'}),
      el('button', {class: 'danger', testid: 'stop-confirm', text: 'Stop training', onclick: () => this.stop()}),
      el('button', {class: 'secondary', testid: 'stop-cancel', text: 'Cancel', onclick: () => this.confirmStop(false)}),
    );
    this.controlMsg = el('div', {class: 'inline-msg', testid: 'control-message'});

    this.journalBody = el('tbody');
    this.tagSelect = el('select', {testid: 'download-tag', 'aria-label': 'series', onchange: () => this.updateLinks()});
    this.csvLink = el('a', {class: 'button secondary', testid: 'download-csv', text: 'CSV', onclick: (e) => this.download(e)});
    this.jsonLink = el('a', {class: 'button secondary', testid: 'download-json', text: 'JSON', onclick: (e) => this.download(e)});

    this.hparams = new HParamsPanel(this);
    this.metrics = new MetricsPanel(this);
    this.rules = new RulesPanel(this);
    this.undoActions = (e) => this.undoButton(e);
    this.terminal = new TerminalPanel(this);
    this.restartText = el('div', {class: 'inline-msg', testid: 'restart-help'});
    if (live) {
      this.store = new SeriesStore();
      this.streams = new Map(); // run -> RunStream: the selected run and the runs overlaid
      this.charts = new ChartsPanel(this);
    }
    this.build();
  }

  build() {
    const header = el(
      'header',
      {class: 'topbar', testid: 'run-bar'},
      el('label', {class: 'run-pick'}, 'Run ', this.runSelect),
      this.badge,
      el('span', {class: 'stat'}, 'step ', this.stepText),
      el('span', {class: 'stat'}, this.rateText, ' steps/s'),
      el('span', {class: 'stat'}, 'heartbeat ', this.beatText),
      this.whoText,
      this.ranksText,
      el('span', {class: 'spacer'}),
      this.controlMsg,
      this.pauseButton,
      this.resumeButton,
      this.stopButton,
    );
    const journal = section(
      'Journal',
      'journal-card',
      el(
        'div',
        {class: 'scroll'},
        el(
          'table',
          {class: 'grid', testid: 'journal'},
          el('thead', {}, el('tr', {}, ['Step', 'When', 'Who', 'What', 'Result', ''].map((h) => el('th', {text: h})))),
          this.journalBody,
        ),
      ),
    );
    const downloads = section(
      'Downloads',
      'downloads',
      el('div', {class: 'form-row'}, el('label', {}, 'Series ', this.tagSelect), this.csvLink, this.jsonLink),
      el('p', {class: 'muted', text: 'Every scalar series of the run, at full resolution from its event files. PNG of a metric: its PNG button.'}),
    );
    this.main = el(
      'div',
      {class: 'columns', testid: 'run-view'},
      el('div', {class: 'col'}, this.hparams.element, journal, this.rules.element),
      el('div', {class: 'col'}, this.metrics.element, this.terminal.element, downloads),
    );
    const charts = this.charts ? this.charts.element : null;
    if (charts) this.main.prepend(el('div', {class: 'wide'}, charts));
    const bar = el('div', {class: 'sticky'}, header, this.stopConfirm, this.restartText);
    this.root.replaceChildren(el('div', {class: `bidviz${this.liveMode ? ' live-mode' : ''}`}, bar, this.banner, this.help, this.main));
  }

  run() {
    return this.selected;
  }

  send(kind, args, onQueued = null) {
    if (!this.selected) return Promise.reject(new Error('pick a run first'));
    return this.api.sendCommand(this.selected, kind, args, {onQueued});
  }

  refreshSoon() {
    setTimeout(() => this.poll(false), 150);
  }

  showBanner(text, kind = 'warn') {
    this.banner.hidden = !text;
    this.banner.className = `banner ${kind}`;
    this.banner.textContent = text || '';
  }

  async loadKinds() {
    this.kinds = await getJson('kinds');
    this.metrics.setKinds(this.kinds);
    this.rules.setKinds(this.kinds);
  }

  async loadRuns() {
    const data = await getJson('runs');
    this.runs = data.runs;
    this.problem = data.problem;
    const names = this.runs.map((r) => r.run);
    const current = [...this.runSelect.options].map((o) => o.value);
    if (names.join('\n') !== current.join('\n')) {
      this.runSelect.replaceChildren(
        ...this.runs.map((r) => el('option', {value: r.run, text: r.controllable ? r.run : `${r.run} (no bridge)`})),
      );
    }
    if (!names.length) {
      this.selected = null;
      return;
    }
    if (!this.selected || !names.includes(this.selected)) {
      const remembered = localStorage.getItem(RUN_KEY);
      const firstLive = this.runs.find((r) => r.live === 'live') || this.runs.find((r) => r.controllable);
      this.selected = names.includes(remembered) ? remembered : (firstLive || this.runs[0]).run;
      this.loadTags();
    }
    this.runSelect.value = this.selected;
  }

  select(run) {
    this.selected = run;
    localStorage.setItem(RUN_KEY, run);
    this.state = null;
    this.journal = [];
    this.journalBody.replaceChildren();
    this.journalVersion = null; // the next poll reads the journal in full
    this.loadTags();
    if (this.liveMode) {
      this.charts.reset();
      this.follow();
      this.charts.redrawAll(); // what was streamed already (a run overlaid before, or selected again) is not sent again
    }
    this.poll(false);
  }

  // -- live mode: one stream per followed run ---------------------------------------------------------------------

  follow() {
    const wanted = new Set([this.selected, ...this.charts.comparedRuns()].filter(Boolean));
    for (const [run, stream] of this.streams) {
      if (!wanted.has(run)) {
        stream.close();
        this.streams.delete(run);
        this.store.runs.delete(run);
      }
    }
    for (const run of wanted) {
      if (!this.streams.has(run)) {
        this.streams.set(run, new RunStream(run, (name, data) => this.onEvent(run, name, data), (e) => this.onStreamTrouble(run, e)));
      }
    }
  }

  followCompared() {
    this.follow();
    this.charts.redrawAll();
  }

  hasTag(tag) {
    return [...this.tagSelect.options].some((o) => o.value === tag);
  }

  streamedPoints(run, tag) {
    return this.store ? this.store.points(run, tag) : null;
  }

  onEvent(run, name, data) {
    if (name === 'scalars') {
      const tags = this.store.apply(run, data);
      this.charts.changed(data.reset ? this.store.tags(run) : tags);
      if (run === this.selected && this.state) this.metrics.update(this.state, this.live);
      return;
    }
    if (run !== this.selected) return;
    if (name === 'state') {
      this.state = data.state;
      this.live = data.live;
      this.showView(data);
    } else if (name === 'journal') {
      this.journal = (data.reset ? data.entries : this.journal.concat(data.entries)).slice(-JOURNAL_SHOWN);
      renderJournal(this.journalBody, this.journal, this.undoActions);
    } else if (name === 'tags') {
      this.loadTags();
    } else if (name === 'problem') {
      this.showBanner(data.problem, 'error');
    }
  }

  onStreamTrouble(run, error) {
    if (run !== this.selected) return;
    if (!error) {
      if (this.streamLost) this.showBanner('');
      this.streamLost = false;
    } else if (error instanceof ApiError && error.notOwner) {
      this.showNotOwner(error);
    } else if (!this.streamLost) {
      this.streamLost = true; // said once; the stream retries with backoff
      this.showBanner(`The live stream of ${run} was cut (${error.message}); reconnecting…`, 'warn');
    }
  }

  async loadTags() {
    const run = this.selected;
    if (!run) return;
    try {
      const {tags} = await getJson('tags', {run});
      if (run !== this.selected) return;
      const before = this.tagSelect.value;
      this.tagSelect.replaceChildren(...tags.map((t) => el('option', {value: t, text: t})));
      if (tags.includes(before)) this.tagSelect.value = before;
    } catch (_) {
      this.tagSelect.replaceChildren();
    }
    this.updateLinks();
  }

  updateLinks() {
    const tag = this.tagSelect.value;
    for (const [link, format] of [[this.csvLink, 'csv'], [this.jsonLink, 'json']]) {
      if (!tag) {
        link.removeAttribute('href');
        continue;
      }
      const query = new URLSearchParams({run: this.selected, tag, format, download: '1'});
      link.href = `./data?${query}`;
      link.download = `${this.selected}_${tag}.${format}`.replace(/[^\w.-]+/g, '_');
    }
  }

  // A download link the browser follows by itself when the kernel vouches for us; with a control token, fetched
  // here instead, since only a request made by script can carry the token's header.
  async download(event) {
    const link = event.currentTarget;
    if (!link.href || !this.api.hasControlToken()) return;
    event.preventDefault();
    try {
      await download(link.href, link.download);
    } catch (e) {
      this.showBanner(`download failed: ${e.message}`, 'error');
    }
  }

  // This TensorBoard cannot tell that the tab is its user's: say who was refused and what to run.
  showNotOwner(error) {
    this.showBanner(
      `${error.message}\n\nTo use this tab as the user who runs TensorBoard: run \`${tabLinkCommand()}\` as that user ` +
        'on the TensorBoard machine and open the link it prints (it ends in #bidviz&token=...).',
      'error',
    );
    this.help.hidden = true;
    this.main.hidden = true;
  }

  // The next poll's delay: every second, doubling up to BACKOFF_MAX_MS while the server cannot be reached.
  delay() {
    return Math.min(POLL_MS * 2 ** this.failures, BACKOFF_MAX_MS);
  }

  async poll(schedule = true) {
    if (this.inflight) {
      // A refresh is under way: the regular poll still keeps its rhythm.
      if (schedule) this.timer = setTimeout(() => this.poll(), this.delay());
      return;
    }
    this.inflight = true;
    try {
      if (!this.kinds) await this.loadKinds();
      if (this.tick % RUNS_EVERY === 0 || !this.runs.length) {
        await this.loadRuns();
        if (!this.liveMode && this.tick) this.loadTags(); // new series: the download list, the metrics' histories
      }
      this.tick += 1;
      if (this.liveMode) {
        this.charts.setRuns(this.runs, this.selected);
        if (this.selected && !this.streams.has(this.selected)) this.follow();
        if (!this.selected) this.showView(null);
      } else {
        await this.loadRun();
      }
      if (this.failures) this.showBanner('');
      this.failures = 0;
    } catch (e) {
      if (e instanceof ApiError && e.notOwner) this.showNotOwner(e);
      else if (e instanceof ApiError) this.showBanner(`BIDViz cannot reach its routes: ${e.message}`, 'error');
      else {
        // No answer at all: the server is gone. Say so once, then retry less and less often.
        if (!this.failures) {
          this.showBanner(
            `The BIDViz server does not answer (${e.message}): it stopped, or the network is down. This page retries ` +
              `every ${BACKOFF_MAX_MS / 1000} s at most and picks up where it was when the server is back.`,
            'error',
          );
        }
        this.failures += 1;
      }
    } finally {
      this.inflight = false;
      if (schedule) this.timer = setTimeout(() => this.poll(), this.delay());
    }
  }

  async loadRun() {
    if (!this.selected) {
      this.showView(null);
      return;
    }
    const run = this.selected;
    let stateData;
    // The journal's version from the last answer: while nothing was appended the server answers {unchanged}.
    const since = this.journalRun === run ? this.journalVersion : null;
    const [stateResult, journalData] = await Promise.all([
      getJson('state', {run}).catch((e) => e),
      getJson('journal', since ? {run, limit: 200, since} : {run, limit: 200}).catch(() => ({entries: []})),
    ]);
    if (run !== this.selected) return;
    if (stateResult instanceof ApiError && stateResult.status === 409) {
      // The run's state.json is corrupt or unreadable: say which file and why, instead of "unreachable".
      stateData = {state: null, live: 'unreadable', now: Date.now() / 1000, problem: stateResult.message};
    } else if (stateResult instanceof Error) {
      throw stateResult;
    } else {
      stateData = stateResult;
    }
    this.state = stateData.state;
    this.live = stateData.live;
    this.showView(stateData);
    if (journalData.unchanged) return;
    this.journalRun = run;
    this.journalVersion = journalData.version || null;
    renderJournal(this.journalBody, journalData.entries || [], this.undoActions);
  }

  showView(data) {
    const state = data && data.state;
    const live = data ? data.live : 'none';
    this.badge.textContent = state && state.paused && live === 'live' ? 'paused' : live;
    this.badge.className = `badge ${state && state.paused && live === 'live' ? 'paused' : live}`;
    this.stepText.textContent = formatValue(state ? state.step : null);
    this.rateText.textContent = state && typeof state.steps_per_sec === 'number' ? state.steps_per_sec.toFixed(1) : '–';
    this.beatText.textContent = state ? formatAge(data.now - state.heartbeat) : '–';
    this.whoText.textContent = state ? `pid ${state.pid} on ${state.host}` : '';
    const world = state && Number.isInteger(state.world) ? state.world : 1;
    this.ranksText.hidden = world < 2;
    if (world >= 2) {
      const steps = Array.isArray(state.rank_steps) ? state.rank_steps : [];
      const each = steps.map((s, k) => `${k}: ${s === null || s === undefined ? '–' : formatValue(s)}`).join(', ');
      this.ranksText.textContent = `${world} ranks` + (each ? ` (steps ${each})` : '');
      this.ranksText.title = 'each rank\'s step, as the ranks last reported them (about once a second)';
    }

    const helpText = this.help.querySelector('p');
    if (!this.runs.length) {
      this.showBanner('');
      helpText.textContent = 'No runs in this log directory yet. Start a training script that writes here; to steer it from this tab, attach a Bridge:';
    } else if (this.problem) {
      this.showBanner(this.problem, 'warn');
    } else if (data && data.problem) {
      this.showBanner(data.problem, 'error');
    } else if (state && state.rank_error) {
      this.showBanner(`The ranks of this job lost each other: ${state.rank_error}`, 'error');
    } else if (!state) {
      this.showBanner('');
      helpText.textContent = `Run "${this.selected}" has no BIDViz bridge, so it is shown read-only (downloads work). To steer a run from here, attach a Bridge in its training script:`;
    } else if (live === 'stale') {
      this.showBanner(
        `The bridge of this run is stale: no heartbeat for ${formatAge(data.now - state.heartbeat).replace(' ago', '')}. ` +
          'Training hung, crashed or was killed.',
        'warn',
      );
    } else if (live === 'ended') {
      this.showBanner('This run has ended: its training closed the bridge.', 'info');
    } else if (state.paused && state.guard && state.guard.tripped && state.guard.tripped.active) {
      const trip = state.guard.tripped;
      const snap = trip.snapshot ? ` The last snapshot is ${trip.snapshot.id}, from step ${trip.snapshot.step} (${trip.snapshot.reason}).` : '';
      this.showBanner(
        `Paused by the divergence guard at step ${trip.step}: ${trip.reason}.${snap} Click undo beside the change in ` +
          'the journal to rewind, set a better value, then Resume.',
        'warn',
      );
    } else if (state.paused) {
      this.showBanner('Training is paused at a step boundary. Resume to continue.', 'info');
    } else if (state.watcher_error) {
      this.showBanner(`The bridge's watcher reported: ${state.watcher_error}`, 'warn');
    } else {
      this.showBanner('');
    }
    this.help.hidden = Boolean(state) || Boolean(this.problem && this.runs.length) || Boolean(data && data.problem);
    this.main.hidden = !this.selected;
    // Only a live bridge can be steered: an ended or stale run shows its last state, read-only.
    const controllable = Boolean(state) && !this.problem && live === 'live';
    if (controllable !== this.controllable) {
      this.controllable = controllable;
      for (const panel of [this.hparams, this.metrics, this.terminal, this.rules]) panel.setEnabled(controllable);
      for (const b of [this.pauseButton, this.resumeButton, this.stopButton]) b.disabled = !controllable;
      if (!controllable) this.confirmStop(false);
    }
    this.restartText.textContent =
      state && (live === 'ended' || live === 'stale')
        ? `Controls are off: the run is ${live}. To steer it again, start its training script again on the same ` +
          `directory (a Bridge with resume=True keeps its metrics and tuned values); commands sent meanwhile with ` +
          '`bidviz ... --queue` wait in its inbox.'
        : '';
    this.pauseButton.hidden = Boolean(state && state.paused);
    this.resumeButton.hidden = !(state && state.paused);
    this.hparams.update(state);
    this.metrics.update(state, live);
    this.rules.update(state);
    if (!controllable) this.hparams.setEnabled(false);
  }

  // "undo" beside a journaled change that has a snapshot from right before it: a rewind to that snapshot (itself
  // journaled with an undo of its own). Snapshots are bounded: an old change whose snapshot was dropped has none.
  undoButton(e) {
    const kept = (this.state && this.state.snapshots && this.state.snapshots.kept) || [];
    if (e.event !== 'command' || e.status !== 'applied' || !kept.some((s) => s.command === e.id)) return null;
    return el('button', {
      class: 'secondary',
      testid: `undo-${e.id}`,
      text: 'undo',
      title: 'rewind to the snapshot taken right before this (model, optimizer, values, RNG)',
      disabled: !this.controllable,
      onclick: () => this.undo(e),
    });
  }

  async undo(e) {
    this.controlMsg.className = 'inline-msg';
    this.controlMsg.textContent = `rewinding to before ${e.label || e.kind}…`;
    try {
      const resp = await this.send('rewind', {before: e.id});
      const ok = resp.status === 'applied';
      this.controlMsg.className = ok ? 'inline-msg' : 'inline-msg error';
      this.controlMsg.textContent = ok ? resp.result.note : `rewind ${resp.status}: ${resp.error && resp.error.message}`;
    } catch (err) {
      this.controlMsg.className = 'inline-msg error';
      this.controlMsg.textContent = err.message;
    }
    this.refreshSoon();
  }

  async control(kind) {
    this.controlMsg.className = 'inline-msg';
    this.controlMsg.textContent = `${kind}…`;
    try {
      const resp = await this.send(kind, {});
      this.controlMsg.textContent = resp.status === 'applied' ? `${DONE[kind]} at step ${resp.step ?? '–'}` : `${kind} ${resp.status}: ${resp.error && resp.error.message}`;
    } catch (e) {
      this.controlMsg.className = 'inline-msg error';
      this.controlMsg.textContent = e.message;
    }
    this.refreshSoon();
  }

  confirmStop(show) {
    this.stopConfirm.hidden = !show;
    this.stopButton.hidden = show;
  }

  async stop() {
    this.confirmStop(false);
    await this.control('stop');
  }
}

// TensorBoard tells its iframed plugins when it reloaded data, over a MessagePort it receives from us.
function listenForReload(onReload) {
  if (window.parent === window) return;
  const channel = new MessageChannel();
  channel.port1.onmessage = (event) => {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch (_) {
      return;
    }
    if (msg.isReply) return;
    if (msg.type === 'experimental.DataReloaded') onReload();
    channel.port1.postMessage(JSON.stringify({type: msg.type, id: msg.id, payload: null, error: null, isReply: true}));
  };
  window.parent.postMessage('experimental.bootstrap', window.location.origin, [channel.port2]);
}

// Follow TensorBoard's light/dark setting: it toggles `dark-mode` on its own <body>, which (same origin) we can see.
function followTheme() {
  let body;
  try {
    body = window.parent.document.body;
  } catch (_) {
    return; // not inside TensorBoard's page
  }
  const sync = () => document.documentElement.classList.toggle('dark', body.classList.contains('dark-mode'));
  sync();
  new MutationObserver(sync).observe(body, {attributes: true, attributeFilter: ['class']});
}

export async function render(options = {}) {
  const css = el('link', {rel: 'stylesheet', href: new URL('./style.css', import.meta.url).href});
  document.head.append(css);
  const root = el('div', {id: 'bidviz-root'});
  document.body.append(root);
  followTheme();
  const app = new App(root, options);
  listenForReload(() => {
    app.tick = 0;
    app.loadTags();
    app.poll(false);
  });
  app.poll();
}
