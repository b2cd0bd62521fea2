// Small DOM helpers: build elements from data, format numbers and ages.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'testid') node.dataset.testid = value;
    else if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function section(title, testid, ...children) {
  return el('section', {class: 'card', testid}, el('h2', {text: title}), ...children);
}

export function formatValue(value) {
  if (value === null || value === undefined) return '–';
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) return String(value);
    if (Number.isInteger(value)) return String(value);
    const a = Math.abs(value);
    return a !== 0 && (a < 1e-4 || a >= 1e6) ? value.toExponential(4) : String(Number(value.toPrecision(6)));
  }
  if (typeof value === 'string') return value;
  return JSON.stringify(value);
}

export function formatAge(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–';
  if (seconds < 1) return 'just now';
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

export function downloadUrl(url, filename) {
  const a = el('a', {href: url, download: filename, style: 'display:none'});
  document.body.append(a);
  a.click();
  a.remove();
}

export function downloadText(text, filename, type = 'application/json') {
  const url = URL.createObjectURL(new Blob([text], {type}));
  downloadUrl(url, filename);
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
