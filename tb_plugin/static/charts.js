// Charts drawn by uPlot (vendored: uPlot.iife.min.js, v1.6.32 from npm, MIT, its license in uPlot.LICENSE.txt;
// served by our own routes, since TensorBoard's CSP forbids CDNs). Drag to zoom, double-click to reset, hover for
// values; lines of several runs overlaid, TensorBoard's smoothing, a log scale, and PNG export.

const COLORS = ['#f57c00', '#1976d2', '#388e3c', '#7b1fa2', '#c2185b', '#00838f', '#5d4037', '#455a64'];
const BAND = ['min', 'mean', 'max'];
let loading = null;

// uPlot, loaded once as a classic script beside this module (the file stays byte-identical to the npm release).
export function loadUPlot() {
  if (window.uPlot) return Promise.resolve(window.uPlot);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const css = document.createElement('link');
      css.rel = 'stylesheet';
      css.href = new URL('./uPlot.min.css', import.meta.url).href;
      document.head.append(css);
      const script = document.createElement('script');
      script.src = new URL('./uPlot.iife.min.js', import.meta.url).href;
      script.onload = () => resolve(window.uPlot);
      script.onerror = () => reject(new Error('could not load uPlot.iife.min.js'));
      document.head.append(script);
    });
  }
  return loading;
}

// A y-axis label that tells apart the ticks of any range: uPlot's own rounds 1e-7 to "0".
export function tick(value) {
  if (value === null || value === undefined) return '';
  const a = Math.abs(value);
  if (a === 0) return '0';
  return a < 1e-3 || a >= 1e6 ? value.toExponential(2).replace(/\.?0+e/, 'e') : String(Number(value.toPrecision(6)));
}

// TensorBoard's smoothing: a debiased exponential moving average over the finite values (gaps stay gaps).
export function smooth(values, weight) {
  if (!weight) return values;
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return v;
    last = last * weight + (1 - weight) * v;
    n += 1;
    return last / (1 - weight ** n);
  });
}

// One chart. `lines`: [{label, points: [[step, value], ...]}] (value null: a gap), or with `band: true` points
// [[step, {min, mean, max}], ...] (a histogram metric): its mean with dashed min and max. `stepped`: a value holds
// until the next point (a hyperparameter, written only when it changes), rather than a line between points.
export class Chart {
  constructor({title, testid, height = 180, stepped = false}) {
    this.title = title;
    this.height = height;
    this.stepped = stepped;
    this.element = document.createElement('div');
    this.element.className = 'chart';
    if (testid) this.element.dataset.testid = testid;
    this.element.chart = this; // the chart of this element, for the browser tests and the console: .plot.data
    this.plot = null;
    this.shape = '';
    this.options = {smoothing: 0, log: false};
    this.lines = [];
  }

  set(lines, options = {}) {
    this.lines = lines;
    this.options = {...this.options, ...options};
    return this.draw();
  }

  columns(steps) {
    const index = new Map(steps.map((s, i) => [s, i]));
    const columns = [];
    const series = [{label: 'step'}];
    this.lines.forEach((line, i) => {
      const color = COLORS[i % COLORS.length];
      if (line.band) {
        const cols = BAND.map(() => new Array(steps.length).fill(null));
        for (const [s, v] of line.points) {
          if (v && typeof v === 'object') BAND.forEach((k, j) => (cols[j][index.get(s)] = v[k] ?? null));
        }
        columns.push(...cols);
        for (const k of BAND) series.push({label: `${line.label} ${k}`, stroke: color, width: k === 'mean' ? 1.5 : 0.7, dash: k === 'mean' ? undefined : [4, 3]});
        return;
      }
      let col = new Array(steps.length).fill(null);
      for (const [s, v] of line.points) col[index.get(s)] = typeof v === 'number' && Number.isFinite(v) ? v : null;
      if (this.options.log) col = col.map((v) => (v > 0 ? v : null));
      columns.push(smooth(col, this.options.smoothing));
      const paths = this.stepped ? window.uPlot.paths.stepped({align: 1}) : undefined;
      series.push({label: line.label, stroke: color, width: 1.5, spanGaps: true, paths, points: {show: steps.length < 40}});
    });
    return {columns, series};
  }

  async draw() {
    const uPlot = await loadUPlot();
    const steps = [...new Set(this.lines.flatMap((l) => l.points.map((p) => p[0])))].sort((a, b) => a - b);
    const {columns, series} = this.columns(steps);
    this.element.dataset.points = String(this.lines.reduce((n, l) => n + l.points.length, 0));
    this.element.dataset.lines = String(this.lines.length);
    this.element.dataset.lastStep = steps.length ? String(steps[steps.length - 1]) : '';
    const data = [steps, ...columns];
    const shape = `${series.map((s) => s.label).join('|')}|${this.options.log}`;
    if (this.plot && shape === this.shape) {
      this.plot.setData(data);
      return this.plot;
    }
    if (this.plot) this.plot.destroy();
    this.shape = shape;
    const width = Math.max(200, this.element.clientWidth || this.element.parentElement?.clientWidth || 400);
    this.plot = new uPlot(
      {
        title: this.title,
        width,
        height: this.height,
        series,
        scales: {x: {time: false}, y: this.options.log ? {distr: 3} : {}},
        axes: [{size: 30}, {size: 60, values: (u, splits) => splits.map(tick)}],
        cursor: {drag: {x: true, y: false}},
        legend: {live: true},
      },
      data,
      this.element,
    );
    return this.plot;
  }

  // The chart as a PNG (data: URL) on white, with its title: the canvas uPlot drew, axes and lines included.
  png() {
    if (!this.plot) return null;
    const src = this.plot.ctx.canvas;
    const out = document.createElement('canvas');
    out.width = src.width;
    out.height = src.height + 28;
    const ctx = out.getContext('2d');
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.fillStyle = '#212121';
    ctx.font = '14px Roboto, sans-serif';
    ctx.fillText(this.title || '', 12, 20);
    ctx.drawImage(src, 0, 28);
    return out.toDataURL('image/png');
  }
}
