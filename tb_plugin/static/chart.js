// Sparklines of a metric's recent values, and a larger labelled chart of the same points for PNG download.

const LINE = '#f57c00';
const GRID = '#e0e0e0';
const TEXT = '#616161';

function numeric(points) {
  return points.filter(([step, value]) => typeof value === 'number' && Number.isFinite(value) && step !== null);
}

function extent(values) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.05 || 1;
    lo -= pad;
    hi += pad;
  }
  return [lo, hi];
}

function plot(ctx, points, x0, y0, w, h) {
  const [s0, s1] = extent(points.map((p) => p[0]));
  const [v0, v1] = extent(points.map((p) => p[1]));
  const px = (s) => x0 + ((s - s0) / (s1 - s0)) * w;
  const py = (v) => y0 + h - ((v - v0) / (v1 - v0)) * h;
  ctx.beginPath();
  points.forEach(([s, v], i) => (i ? ctx.lineTo(px(s), py(v)) : ctx.moveTo(px(s), py(v))));
  ctx.stroke();
  const [sl, vl] = points[points.length - 1];
  ctx.beginPath();
  ctx.arc(px(sl), py(vl), 2, 0, 2 * Math.PI);
  ctx.fill();
  return [v0, v1, s0, s1];
}

// Draw into an existing <canvas>, sized for the device's pixel ratio. Returns false when nothing is plottable.
export function drawSparkline(canvas, points) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 120;
  const h = canvas.clientHeight || 28;
  if (canvas.width !== w * ratio || canvas.height !== h * ratio) {
    canvas.width = w * ratio;
    canvas.height = h * ratio;
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const data = numeric(points || []);
  canvas.dataset.points = String(data.length);
  if (data.length < 1) return false;
  ctx.strokeStyle = LINE;
  ctx.fillStyle = LINE;
  ctx.lineWidth = 1.5;
  plot(ctx, data, 2, 3, w - 6, h - 6);
  return true;
}

function label(value) {
  const a = Math.abs(value);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? value.toExponential(2) : String(Number(value.toPrecision(4)));
}

// A 640x240 PNG (data: URL) of the points with the title, value range and step range written on it.
export function chartPng(title, points) {
  const data = numeric(points || []);
  const canvas = document.createElement('canvas');
  canvas.width = 640;
  canvas.height = 240;
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = '14px Roboto, sans-serif';
  ctx.fillStyle = '#212121';
  ctx.fillText(title, 16, 24);
  ctx.strokeStyle = GRID;
  ctx.strokeRect(64, 40, 560, 164);
  if (data.length) {
    ctx.strokeStyle = LINE;
    ctx.fillStyle = LINE;
    ctx.lineWidth = 2;
    const [v0, v1, s0, s1] = plot(ctx, data, 64, 40, 560, 164);
    ctx.font = '12px Roboto, sans-serif';
    ctx.fillStyle = TEXT;
    ctx.textAlign = 'right';
    ctx.fillText(label(v1), 58, 48);
    ctx.fillText(label(v0), 58, 204);
    ctx.textAlign = 'left';
    ctx.fillText(`step ${s0}`, 64, 222);
    ctx.textAlign = 'right';
    ctx.fillText(`step ${s1}`, 624, 222);
  }
  return canvas.toDataURL('image/png');
}
