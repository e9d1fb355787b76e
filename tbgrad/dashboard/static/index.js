// The Gradient-flow dashboard: one heatmap per tbgrad run, layers x epochs.
//
// TensorBoard loads this ES module in an iframe whose base URL is
// /data/plugin/gradient_flow/, so the plugin's routes are relative URLs:
//   ./runs                       the runs, their layers, statistics, verdicts
//   ./heatmaps?run=..&stat=..    raw values (layers x epochs) of several runs
// Nothing else is fetched: no CDN, no build step. Colours are viridis,
// interpolated between 17 stops of matplotlib's table, on ONE scale shared by
// every run shown, so a dark band in one run means the same as in another.
//
// At scale (hundreds of matrices) the rows come from the server in display
// order with each row's kind and repeated block (plugin.py decides both from
// the names); here a block can be collapsed into one row, the per-epoch
// median of its rows shown, and rows are filtered by kind.

const SVG_NS = 'http://www.w3.org/2000/svg';
const VIRIDIS = [
  '#440154', '#48186a', '#472d7b', '#424086', '#3b528b', '#33638d',
  '#2c728e', '#26828e', '#21918c', '#1fa088', '#28ae80', '#3fbc73',
  '#5ec962', '#84d44b', '#addc30', '#d8e219', '#fde725',
].map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));
// Quantized colours: neighbouring cells of one colour become one rectangle.
const LEVELS = 128;
const MISSING_COLOUR = '#e4e4e4'; // NaN, Inf or not logged
const NONPOSITIVE_COLOUR = '#1b1b1b'; // 0 or below: no log10
// Mirrors LINEAR_STATISTICS of plugin.py: no log and no ratio for these.
const LINEAR_STATS = new Set(['weight_mean', 'grad_nonfinite', 'grad_log10_ratio']);
const MAX_DEFAULT_RUNS = 4;
const LABEL_FONT = 12;
const MEDIAN_WIDTH = 64; // the column of row medians right of a map
const ROW_GAP = 2;
const CLIP_QUANTILE = 0.01;
// A run with more rows than this opens with its blocks collapsed.
const AUTO_COLLAPSE_ROWS = 40;
const INDENT = 16; // a block's rows under its name
// plugin.py's KINDS, in the order the filter lists them.
const KINDS = ['attention', 'feed-forward', 'embedding', 'head', 'other'];
const REFERENCE_MARK = '◆';
const SUPERSCRIPT = {'-': '⁻', '0': '⁰', '1': '¹', '2': '²', '3': '³', '4': '⁴',
  '5': '⁵', '6': '⁶', '7': '⁷', '8': '⁸', '9': '⁹'};

const STYLE = `
  body { margin: 0; padding: 14px 20px 24px; background: #fff; color: #212121;
    font: 13px/1.4 Roboto, 'Helvetica Neue', Arial, sans-serif; }
  h1 { font-size: 17px; font-weight: 500; margin: 0 0 2px; }
  .lede { color: #555; margin: 0 0 10px; max-width: 980px; }
  .controls { display: flex; flex-wrap: wrap; gap: 8px 22px; align-items: center;
    padding: 8px 0 10px; border-bottom: 1px solid #e6e6e6; }
  .controls label { white-space: nowrap; cursor: pointer; }
  .controls select { font: inherit; padding: 1px 4px; }
  .runs { display: flex; flex-wrap: wrap; gap: 4px 14px; }
  .legend { display: flex; align-items: center; gap: 18px; margin: 10px 0 4px; }
  .legend svg { overflow: visible; }
  .panels { display: flex; flex-wrap: wrap; gap: 18px 28px; margin-top: 6px; }
  .panel { flex: 0 0 auto; }
  .panel h2 { font-size: 14px; font-weight: 500; margin: 6px 0 3px; word-break: break-all; }
  .verdict { margin: 0 0 2px; }
  .reason { color: #666; font-size: 12px; margin: 0 0 6px; }
  .config { color: #666; font-size: 12px; margin: -4px 0 6px; }
  .explanation { font-size: 12px; margin: -2px 0 8px; color: #444; }
  .explanation b { font-weight: 500; color: #212121; }
  .explanation .try { color: #2d4a7a; }
  .config b { color: #212121; font-weight: 500; }
  .badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-weight: 500;
    margin-right: 6px; }
  .badge.vanishing { background: #f4dcd6; color: #8c2f1f; }
  .badge.healthy { background: #dcecdc; color: #2d6236; }
  .badge.exploding { background: #f6e6cc; color: #7d5210; }
  .badge.non-finite { background: #e9ddf2; color: #5a3778; }
  .badge.unknown { background: #eceff1; color: #546e7a; }
  .note { color: #555; margin: 16px 0; max-width: 900px; }
  .error { color: #a03224; }
  .tooltip { position: fixed; pointer-events: none; background: #fff; color: #212121;
    border: 1px solid #cfcfcf; border-radius: 3px; padding: 4px 7px; font-size: 12px;
    box-shadow: 0 1px 4px rgba(0,0,0,.15); display: none; white-space: nowrap; z-index: 2; }
  svg text { fill: #333; font-size: ${LABEL_FONT}px; }
  svg .axis { stroke: #999; stroke-width: 1; }
  svg text.weakest { font-weight: 700; fill: #8c2f1f; }
  svg text.head { fill: #777; font-size: 11px; }
  svg text.median { fill: #555; font-size: 11px; }
  svg text.block { font-weight: 500; fill: #1a1a1a; cursor: pointer; }
  svg text.block:hover { fill: #2d4a7a; text-decoration: underline; }
  svg text.reference, svg text.mark { font-weight: 700; fill: #2d4a7a; }
  svg text.block.weakest { fill: #8c2f1f; }
  svg .separator { stroke: #9aa7bd; stroke-width: 1; stroke-dasharray: 3 2; }
  svg .bracket { stroke: #c5c5c5; stroke-width: 1; }
  .row-controls { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center;
    padding: 8px 0 2px; }
  .row-controls label { white-space: nowrap; cursor: pointer; }
  .row-controls .count { color: #777; }
  .rows-note { color: #555; font-size: 12px; margin: 0 0 4px; }
  svg text.tick { font-size: 12px; }
  .legend-title { line-height: 1.3; }
  button { font: inherit; padding: 1px 10px; cursor: pointer; }
`;

// Everything the page shows; render() fills it, the controls change it.
// hiddenKinds and collapsed hold what the user unticked and folded (kinds
// and block names), so a new kind or block shows; seen holds the runs whose
// blocks were folded once already because they have many rows.
const state = {runs: [], stat: null, relative: false, selected: new Set(), maps: null,
  hiddenKinds: new Set(), collapsed: new Set(), seen: new Set()};
let root = null;
let tooltip = null;

export async function render() {
  document.head.appendChild(el('style', {}, STYLE));
  root = el('div');
  tooltip = el('div', {class: 'tooltip'});
  document.body.append(root, tooltip);
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawPanels, 150);
  });
  await loadRuns();
}

async function loadRuns() {
  root.replaceChildren(el('p', {class: 'note'}, 'Loading runs…'));
  let runs;
  try {
    runs = await getJson('./runs');
  } catch (err) {
    root.replaceChildren(el('p', {class: 'note error'}, `Could not read the runs: ${err.message}`));
    return;
  }
  state.runs = runs;
  if (!runs.length) {
    root.replaceChildren(
      header(),
      el('p', {class: 'note', id: 'empty'},
        'No tbgrad runs in this log folder: no run holds grad_mean_abs/<layer> scalars or a ' +
        'tbgrad/layers summary. Log a run with tbgrad.GradientTensorBoard(log_dir) in ' +
        'model.fit (or scripts/train.py), point tensorboard --logdir at its parent folder, ' +
        'and reload.'));
    return;
  }
  const stats = allStatistics(runs);
  if (!stats.includes(state.stat)) state.stat = stats[0];
  const names = new Set(runs.map((r) => r.run));
  state.selected = new Set([...state.selected].filter((r) => names.has(r)));
  if (!state.selected.size) runs.slice(0, MAX_DEFAULT_RUNS).forEach((r) => state.selected.add(r.run));
  root.replaceChildren(header(), controls(stats), el('div', {class: 'row-controls', id: 'row-controls'}),
    el('div', {class: 'legend', id: 'legend'}), el('div', {class: 'panels', id: 'panels'}));
  await loadMaps();
}

function header() {
  return el('div', {}, [
    el('h1', {}, 'Gradient flow'),
    el('p', {class: 'lede'},
      'One map per run: a row per tracked variable in model order, input at the top; a model\'s ' +
      'repeated blocks are grouped in the order of their index, and the reference row ' +
      `(${REFERENCE_MARK} head: the matrix that produces the output, which the ratios are relative to) ` +
      'is at the bottom; a column per epoch. Colour is log10 of the statistic (linear for weight_mean, ' +
      'grad_nonfinite and grad_log10_ratio, already a log), on one scale for every run shown, so a dark band in grad_mean_abs is a ' +
      'layer the gradient hardly reaches (vanishing), whatever the run. Hover a cell for its value.'),
    el('p', {class: 'lede', id: 'update-ratio-reference'},
      'update_ratio is ||Δw|| / ||w|| of each optimizer step, averaged over the epoch: near ' +
      '1e-3 is healthy (CS231n\'s rule of thumb); far below, the layer hardly learns; far ' +
      'above, its steps are too large for it.'),
  ]);
}

function allStatistics(runs) {
  const seen = [];
  for (const run of runs) for (const s of run.statistics) if (!seen.includes(s)) seen.push(s);
  return seen;
}

function controls(stats) {
  const select = el('select', {id: 'stat'},
    stats.map((s) => el('option', {value: s, ...(s === state.stat ? {selected: ''} : {})}, s)));
  select.addEventListener('change', () => { state.stat = select.value; loadMaps(); });
  const relative = el('input', {type: 'checkbox', id: 'relative'});
  relative.checked = state.relative;
  relative.addEventListener('change', () => { state.relative = relative.checked; loadMaps(); });
  const runBoxes = state.runs.map((run) => {
    const box = el('input', {type: 'checkbox', value: run.run});
    box.checked = state.selected.has(run.run);
    box.addEventListener('change', () => {
      if (box.checked) state.selected.add(run.run); else state.selected.delete(run.run);
      loadMaps();
    });
    return el('label', {title: run.run}, [box, ' ' + run.name]);
  });
  const reload = el('button', {type: 'button'}, 'Reload');
  reload.addEventListener('click', loadRuns);
  return el('div', {class: 'controls'}, [
    el('label', {}, ['Statistic ', select]),
    el('label', {id: 'relative-label'}, [relative, ` relative to the reference (${REFERENCE_MARK} head)`]),
    el('div', {class: 'runs'}, runBoxes),
    reload,
  ]);
}

async function loadMaps() {
  const linear = LINEAR_STATS.has(state.stat);
  const box = document.getElementById('relative');
  box.disabled = linear;
  document.getElementById('relative-label').title = linear
    ? `${state.stat} is signed or a count: no ratio to the reference` : '';
  const shown = state.runs.filter((r) => state.selected.has(r.run));
  const withStat = shown.filter((r) => r.statistics.includes(state.stat));
  state.maps = null;
  if (withStat.length) {
    const params = new URLSearchParams({stat: state.stat, relative: state.relative && !linear ? '1' : '0'});
    withStat.forEach((r) => params.append('run', r.run));
    try {
      state.maps = await getJson('./heatmaps?' + params);
      foldLargeRuns(state.maps.runs);
    } catch (err) {
      document.getElementById('panels').replaceChildren(
        el('p', {class: 'note error'}, `Could not read ${state.stat}: ${err.message}`));
      return;
    }
  }
  drawPanels();
}

// -- drawing ----------------------------------------------------------------

function drawPanels() {
  const panels = document.getElementById('panels');
  if (!panels) return;
  const shown = state.runs.filter((r) => state.selected.has(r.run));
  if (!shown.length) {
    document.getElementById('legend').replaceChildren();
    document.getElementById('row-controls').replaceChildren();
    panels.replaceChildren(el('p', {class: 'note'}, 'No run selected.'));
    return;
  }
  const maps = new Map((state.maps ? state.maps.runs : []).map((m) => [m.run, m]));
  const scale = makeScale(state.maps, [...maps.values()]);
  document.getElementById('row-controls').replaceChildren(...rowControls([...maps.values()]));
  document.getElementById('legend').replaceChildren(...legend(scale));
  const width = panelWidth(shown.length);
  panels.replaceChildren(...shown.map((run) => panel(run, maps.get(run.run), scale, width)));
}

function panelWidth(count) {
  const available = Math.max(360, document.body.clientWidth - 40);
  const perRow = Math.max(1, Math.min(count, Math.floor(available / 440)));
  return Math.min(900, Math.floor((available - 28 * (perRow - 1)) / perRow));
}

function panel(run, map, scale, width) {
  const verdict = run.verdict;
  const weakest = run.weakest_layer
    ? [' weakest layer ', el('b', {}, run.weakest_layer),
      run.weakest_layer_ratio != null
        ? `: its mean |g| is ${fmt(run.weakest_layer_ratio)} × the reference's (median over epochs)` : '']
    : [];
  const body = map ? heatmap(run, map, scale, width)
    : el('p', {class: 'note'}, `${state.stat} is not logged in this run.`);
  return el('section', {class: 'panel', 'data-run': run.run, style: `width:${width}px`}, [
    el('h2', {}, run.name),
    el('div', {class: 'verdict'}, [el('span', {class: `badge ${verdict.label}`}, verdict.label), ...weakest]),
    el('div', {class: 'reason'}, verdict.reason + (run.layer_order === 'natural'
      ? ' · layer order guessed from the names (no tbgrad/layers summary)' : '')),
    ...(verdict.explanation ? [explanation(verdict.explanation)] : []),
    ...(run.config && run.config.length ? [configLine(run.config)] : []),
    ...(map ? [rowsNote(map)] : []),
    body,
  ]);
}

// The verdict explained (verdict.py's Explanation): "why: <the rule, the
// layers and epochs, the signals>" and, when there is one, "try: <a fix>".
function explanation(found) {
  return el('div', {class: 'explanation'}, found.text.split('\n').map((line) => {
    const [head, ...rest] = line.split(': ');
    return el('div', {class: head === 'try' ? 'try' : 'why'}, [el('b', {}, `${head}:`), ` ${rest.join(': ')}`]);
  }));
}

// The run's HParams, every field in the order written: "act tanh · depth 5 · ...".
function configLine(config) {
  const parts = config.flatMap(([name, value], i) =>
    [i ? ' · ' : '', `${name} `, el('b', {}, value == null ? '' : String(value))]);
  return el('div', {class: 'config'}, parts);
}

function heatmap(run, map, scale, width) {
  const rows = displayRows(map);
  if (!rows.length) return el('p', {class: 'note'}, 'Every row of this run is filtered out.');
  // With blocks the labels form a tree (a block's name, its rows indented
  // under it); without, they stay right-aligned against the map.
  const tree = map.blocks.some((b) => b != null);
  const chars = (r) => r.label.length + (tree && r.indent ? INDENT / (LABEL_FONT * 0.62) : 0) +
    (r.reference ? 2 : 0);
  const labelWidth = Math.ceil(Math.max(...rows.map(chars)) * LABEL_FONT * 0.62) + 14;
  const rowHeight = Math.max(14, Math.min(60, Math.floor(380 / Math.max(1, rows.length))));
  const plot = {x: labelWidth, y: 18, w: Math.max(60, width - labelWidth - MEDIAN_WIDTH), h: rowHeight * rows.length};
  const columns = Math.max(1, map.epochs.length);
  const cw = plot.w / columns;
  const chart = svg('svg', {width, height: plot.y + plot.h + 40, class: 'map'});
  const cells = svg('g', {'shape-rendering': 'crispEdges'});
  rows.forEach((r, i) => { if (r.values) drawRow(cells, r.values, plot.x, plot.y + i * rowHeight, cw, rowHeight, scale); });
  chart.appendChild(cells);
  chart.appendChild(svg('text', {x: plot.x + plot.w + 8, y: plot.y - 6, class: 'head'}, 'median'));
  rows.forEach((r, i) => {
    const y = plot.y + (i + 0.5) * rowHeight;
    const weakest = r.layers.includes(run.weakest_layer) ? ' weakest' : '';
    chart.appendChild(rowLabel(r, tree, plot, y, weakest));
    if (r.type === 'header') {
      // The block's rows hang from its name.
      const x = 4 + INDENT / 2;
      chart.appendChild(svg('line', {x1: x, x2: x, y1: y + rowHeight / 2 - 2, y2: y + (r.size + 0.5) * rowHeight - 2,
        class: 'bracket'}));
    }
    if (r.reference && i > 0) {
      chart.appendChild(svg('line', {x1: 0, x2: plot.x + plot.w, y1: plot.y + i * rowHeight,
        y2: plot.y + i * rowHeight, class: 'separator'}));
    }
    // The row's median, so that the colours can be read as numbers too.
    if (r.values) {
      chart.appendChild(svg('text', {x: plot.x + plot.w + 8, y, 'dominant-baseline': 'central',
        class: 'median' + weakest}, fmt(median(r.values))));
    }
  });
  epochAxis(chart, map.epochs, plot, cw);
  const marker = svg('rect', {fill: 'none', stroke: '#fff', 'stroke-width': 1.5, visibility: 'hidden',
    'pointer-events': 'none'});
  chart.appendChild(marker);
  hover(chart, run, map, rows, plot, cw, rowHeight, marker);
  chart.addEventListener('click', (event) => {
    const i = Math.floor((event.clientY - chart.getBoundingClientRect().top - plot.y) / rowHeight);
    if (rows[i] && rows[i].type !== 'layer') toggleBlock(rows[i].block);
  });
  return chart;
}

// The rows drawn for one run, top to bottom, after the kind filter and the
// folded blocks: {type: 'layer' | 'header' | 'block', label, layers, values,
// block, size (a header's rows), indent, reference}. A folded block is one
// row whose value per epoch is the median of its rows shown.
function displayRows(map) {
  const out = [];
  const shown = map.layers.map((_, i) => i).filter((i) => !state.hiddenKinds.has(map.kinds[i]));
  for (let k = 0; k < shown.length;) {
    const i = shown[k];
    const block = map.blocks[i];
    if (block == null) {
      const reference = map.layers[i] === map.reference;
      out.push({type: 'layer', label: map.layers[i], layers: [map.layers[i]], values: map.values[i],
        kind: map.kinds[i], reference});
      k++;
      continue;
    }
    const members = [];
    while (k < shown.length && map.blocks[shown[k]] === block) members.push(shown[k++]);
    const layers = members.map((m) => map.layers[m]);
    if (state.collapsed.has(block)) {
      const log = state.maps.scale === 'log';
      const values = map.epochs.map((_, j) => {
        const m = median(members.map((r) => map.values[r][j]), log);
        return Number.isNaN(m) ? null : m;
      });
      out.push({type: 'block', label: `▸ ${block} (${members.length})`, layers, values, block,
        kind: [...new Set(members.map((m) => map.kinds[m]))].join(', ')});
      continue;
    }
    out.push({type: 'header', label: `▾ ${block}`, layers: [], values: null, block, size: members.length});
    members.forEach((m) => out.push({type: 'layer', label: shortName(map.layers[m], block),
      layers: [map.layers[m]], values: map.values[m], kind: map.kinds[m], block, indent: true}));
  }
  return out;
}

function shortName(layer, block) {
  return layer.startsWith(block + '/') ? layer.slice(block.length + 1) : layer;
}

function rowLabel(r, tree, plot, y, weakest) {
  const kind = r.type === 'layer' ? 'layer' : 'block';
  const cls = kind + weakest + (r.reference ? ' reference' : '');
  const place = tree
    ? {x: 4 + (r.indent ? INDENT : 0) + (r.reference ? LABEL_FONT * 1.3 : 0), 'text-anchor': 'start'}
    : {x: plot.x - 8, 'text-anchor': 'end'};
  const label = svg('text', {...place, y, 'dominant-baseline': 'central', class: cls}, r.label);
  if (kind === 'block') {
    label.addEventListener('click', (event) => {
      event.stopPropagation(); // the chart's own click would fold it back
      toggleBlock(r.block);
    });
  }
  if (!r.reference) return label;
  // The mark is its own text, so that the label holds the tag's name alone.
  const at = tree ? 4 : plot.x - 8 - r.label.length * LABEL_FONT * 0.62 - 4;
  return svg('g', {}, [
    svg('text', {x: at, y, 'dominant-baseline': 'central', 'text-anchor': tree ? 'start' : 'end',
      class: 'mark'}, [REFERENCE_MARK, svg('title', {}, 'reference (head)')]),
    label,
  ]);
}

function toggleBlock(block) {
  if (state.collapsed.has(block)) state.collapsed.delete(block); else state.collapsed.add(block);
  drawPanels();
}

// Folds every block of a run seen for the first time when it has many rows.
function foldLargeRuns(maps) {
  for (const map of maps) {
    if (state.seen.has(map.run)) continue;
    state.seen.add(map.run);
    if (map.layers.length > AUTO_COLLAPSE_ROWS) map.blocks.forEach((b) => { if (b != null) state.collapsed.add(b); });
  }
}

// The kind filter and the fold buttons, over the maps shown.
function rowControls(maps) {
  if (!maps.length) return [];
  const counts = new Map();
  for (const map of maps) map.kinds.forEach((k) => counts.set(k, (counts.get(k) || 0) + 1));
  const kinds = [...KINDS.filter((k) => counts.has(k)), ...[...counts.keys()].filter((k) => !KINDS.includes(k))];
  const boxes = kinds.map((kind) => {
    const box = el('input', {type: 'checkbox', value: kind, class: 'kind'});
    box.checked = !state.hiddenKinds.has(kind);
    box.addEventListener('change', () => {
      if (box.checked) state.hiddenKinds.delete(kind); else state.hiddenKinds.add(kind);
      drawPanels();
    });
    const what = kind === 'head' ? `head ${REFERENCE_MARK}` : kind;
    return el('label', {}, [box, ` ${what} `, el('span', {class: 'count'}, String(counts.get(kind)))]);
  });
  const parts = [el('span', {}, 'Rows:'), ...boxes];
  const blocks = [...new Set(maps.flatMap((m) => m.blocks.filter((b) => b != null)))];
  if (blocks.length) {
    const fold = el('button', {type: 'button', id: 'collapse-all'}, 'Collapse blocks');
    fold.addEventListener('click', () => { blocks.forEach((b) => state.collapsed.add(b)); drawPanels(); });
    const unfold = el('button', {type: 'button', id: 'expand-all'}, 'Expand blocks');
    unfold.addEventListener('click', () => { blocks.forEach((b) => state.collapsed.delete(b)); drawPanels(); });
    parts.push(fold, unfold);
  }
  return parts;
}

// One line over a map: its rows, blocks and reference, and how a folded
// block's row is made.
function rowsNote(map) {
  const blocks = [...new Set(map.blocks.filter((b) => b != null))];
  const shown = map.kinds.filter((k) => !state.hiddenKinds.has(k)).length;
  const parts = [`${map.layers.length} rows` + (shown < map.layers.length ? ` (${shown} shown)` : '')];
  if (blocks.length) {
    const folded = blocks.filter((b) => state.collapsed.has(b)).length;
    parts.push(`${blocks.length} blocks (${blocks[0]} … ${blocks[blocks.length - 1]}), ${folded} collapsed: ` +
      'a collapsed block (▸) shows, per epoch, the median of its rows shown; click a block to ' +
      'expand or collapse it');
  }
  if (map.reference) parts.push(`${REFERENCE_MARK} reference (head): ${map.reference}`);
  return el('div', {class: 'rows-note'}, parts.join(' · '));
}

function drawRow(group, row, x0, y, cw, h, scale) {
  // Neighbouring cells of the same colour are merged into one rectangle; a
  // white gap between rows keeps each layer a band of its own.
  let start = 0;
  for (let j = 1; j <= row.length; j++) {
    if (j < row.length && scale.colour(row[j]) === scale.colour(row[start])) continue;
    const x = x0 + start * cw;
    // A hair of overlap hides the seams between fractional-pixel columns.
    const w = (j - start) * cw + (j < row.length ? 0.5 : 0);
    group.appendChild(svg('rect', {x: x.toFixed(2), y: y + ROW_GAP / 2, width: w.toFixed(2),
      height: h - ROW_GAP, fill: scale.colour(row[start])}));
    start = j;
  }
}

// With an even count, the middle of the two middle values: on a log colour
// scale their geometric mean, so that a block's row sits between its rows'
// colours (1e-6 and 1e-2 give 1e-4, not 5e-3).
function median(values, log = false) {
  const finite = values.filter((v) => v != null).sort((a, b) => a - b);
  if (!finite.length) return NaN;
  const mid = finite.length >> 1;
  if (finite.length % 2) return finite[mid];
  const [a, b] = [finite[mid - 1], finite[mid]];
  return log && a > 0 && b > 0 ? Math.sqrt(a * b) : (a + b) / 2;
}

function epochAxis(chart, epochs, plot, cw) {
  const y = plot.y + plot.h;
  if (!epochs.length) return;
  for (const t of niceTicks(epochs[0], epochs[epochs.length - 1], Math.max(2, Math.floor(plot.w / 90)))) {
    const j = epochs.findIndex((e) => e >= t);
    if (j < 0) continue;
    const x = plot.x + (j + 0.5) * cw;
    chart.appendChild(svg('line', {x1: x, x2: x, y1: y, y2: y + 4, class: 'axis'}));
    chart.appendChild(svg('text', {x, y: y + 16, 'text-anchor': 'middle'}, String(epochs[j])));
  }
  chart.appendChild(svg('text', {x: plot.x + plot.w, y: y + 32, 'text-anchor': 'end', fill: '#666'}, 'epoch'));
}

function hover(chart, run, map, rows, plot, cw, rowHeight, marker) {
  chart.addEventListener('mousemove', (event) => {
    const box = chart.getBoundingClientRect();
    const j = Math.floor((event.clientX - box.left - plot.x) / cw);
    const i = Math.floor((event.clientY - box.top - plot.y) / rowHeight);
    const r = rows[i];
    if (!r || j < 0 || j >= map.epochs.length) {
      hideTooltip(marker);
      return;
    }
    if (!r.values) {
      tooltip.replaceChildren(el('b', {}, r.block), ` · ${r.size} rows · click to collapse`);
    } else {
      const value = r.values[j];
      const stat = state.maps.relative ? `${state.maps.stat} / reference` : state.maps.stat;
      const what = r.type === 'block' ? `median of ${r.layers.length} rows of ${stat}` : stat;
      const shown = value == null ? 'NaN, Inf or not logged'
        : fmt(value) + (state.maps.scale === 'log' && value > 0 ? `  (log10 ${Math.log10(value).toFixed(2)})` : '');
      const name = r.type === 'block' ? r.block : r.layers[0];
      const kind = r.reference ? 'head, the reference' : r.kind;
      tooltip.replaceChildren(el('b', {}, name), ` (${kind}) · epoch ${map.epochs[j]} · ${run.name}`,
        el('br'), `${what} = ${shown}`, ...(r.type === 'block' ? [el('br'), 'click to expand'] : []));
    }
    tooltip.style.display = 'block';
    tooltip.style.left = `${Math.min(event.clientX + 14, window.innerWidth - tooltip.offsetWidth - 4)}px`;
    tooltip.style.top = `${event.clientY + 14}px`;
    Object.entries({x: plot.x + j * cw, y: plot.y + i * rowHeight, width: Math.max(cw, 2), height: rowHeight,
      visibility: r.values ? 'visible' : 'hidden'}).forEach(([k, v]) => marker.setAttribute(k, v));
  });
  chart.addEventListener('mouseleave', () => hideTooltip(marker));
}

function hideTooltip(marker) {
  tooltip.style.display = 'none';
  marker.setAttribute('visibility', 'hidden');
}

// -- colour scale -----------------------------------------------------------

function makeScale(response, maps) {
  const log = response ? response.scale === 'log' : true;
  const values = maps.flatMap((m) => m.values.flat()).filter((v) => v != null);
  const shown = (log ? values.filter((v) => v > 0).map(Math.log10) : values).sort((a, b) => a - b);
  // The first epochs' transient reaches far beyond the rest of training; the
  // percentiles keep it from flattening every other colour.
  let lo = shown.length ? quantile(shown, CLIP_QUANTILE) : 0;
  let hi = shown.length ? quantile(shown, 1 - CLIP_QUANTILE) : 1;
  if (hi - lo < 1e-9) { lo = (shown[0] ?? 0) - 0.5; hi = (shown[shown.length - 1] ?? 0) + 0.5; }
  const level = (v) => Math.round(Math.max(0, Math.min(1, (v - lo) / (hi - lo))) * (LEVELS - 1));
  return {
    log, lo, hi,
    clippedLow: shown.length > 0 && shown[0] < lo,
    clippedHigh: shown.length > 0 && shown[shown.length - 1] > hi,
    hasMissing: maps.some((m) => m.values.some((row) => row.some((v) => v == null))),
    hasNonPositive: log && values.some((v) => v <= 0),
    colour(v) {
      if (v == null) return MISSING_COLOUR;
      if (log && v <= 0) return NONPOSITIVE_COLOUR;
      return viridis(level(log ? Math.log10(v) : v) / (LEVELS - 1));
    },
  };
}

function quantile(sorted, q) {
  const x = q * (sorted.length - 1);
  const i = Math.floor(x);
  return i + 1 < sorted.length ? sorted[i] + (x - i) * (sorted[i + 1] - sorted[i]) : sorted[i];
}

function viridis(t) {
  const x = t * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const rgb = VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
  return `rgb(${rgb.join(',')})`;
}

function legend(scale) {
  if (!state.maps) return [];
  const width = 420;
  const x0 = 14;
  const height = 14;
  const bar = svg('svg', {width: width + 2 * x0, height: 40, class: 'colourbar'});
  const id = 'viridis-gradient';
  const stops = VIRIDIS.map((_, k) => svg('stop', {offset: `${(100 * k) / (VIRIDIS.length - 1)}%`,
    'stop-color': viridis(k / (VIRIDIS.length - 1))}));
  bar.appendChild(svg('defs', {}, [svg('linearGradient', {id}, stops)]));
  bar.appendChild(svg('rect', {x: x0, y: 2, width, height, fill: `url(#${id})`}));
  // Triangles at the ends, as in matplotlib: values beyond share the end colour.
  if (scale.clippedLow) bar.appendChild(svg('polygon', {points: `${x0},2 ${x0},${2 + height} ${x0 - 10},${2 + height / 2}`, fill: viridis(0)}));
  if (scale.clippedHigh) bar.appendChild(svg('polygon', {points: `${x0 + width},2 ${x0 + width},${2 + height} ${x0 + width + 10},${2 + height / 2}`, fill: viridis(1)}));
  const ticks = scale.log ? logTicks(scale.lo, scale.hi) : niceTicks(scale.lo, scale.hi, 6);
  for (const t of ticks) {
    const x = x0 + ((t - scale.lo) / (scale.hi - scale.lo)) * width;
    bar.appendChild(svg('line', {x1: x, x2: x, y1: 2, y2: 2 + height + 4, class: 'axis'}));
    bar.appendChild(svg('text', {x, y: 2 + height + 18, 'text-anchor': 'middle', class: 'tick'},
      scale.log ? decade(t) : fmt(t)));
  }
  const what = state.maps.relative ? `${state.maps.stat} / reference` : state.maps.stat;
  const how = (scale.log ? 'log scale, one tick per decade' : 'linear scale') +
    (scale.clippedLow || scale.clippedHigh ? '; values beyond the 1st–99th percentile take the end colours' : '');
  const parts = [el('div', {class: 'legend-title'}, [el('b', {}, what), el('br'), el('span', {class: 'reason'}, how)]), bar];
  if (scale.hasNonPositive) parts.push(swatch(NONPOSITIVE_COLOUR, '0 (no log)'));
  if (scale.hasMissing) parts.push(swatch(MISSING_COLOUR, 'NaN, Inf or not logged'));
  return parts;
}

function swatch(colour, text) {
  return el('span', {}, [el('span', {style: `display:inline-block;width:12px;height:12px;` +
    `background:${colour};border:1px solid #bbb;vertical-align:-2px;margin-right:5px`}), text]);
}

function logTicks(lo, hi) {
  const decades = [];
  for (let d = Math.ceil(lo); d <= Math.floor(hi); d++) decades.push(d);
  if (decades.length >= 2) return decades;
  // Less than a decade shown: label 2x and 5x too, e.g. 2×10⁻³.
  const ticks = [];
  for (let d = Math.floor(lo); d <= Math.ceil(hi); d++) {
    for (const m of [1, 2, 5]) {
      const t = d + Math.log10(m);
      if (t >= lo && t <= hi) ticks.push(t);
    }
  }
  return ticks;
}

function decade(t) {
  const d = Math.floor(t + 1e-9);
  const m = Math.round(10 ** (t - d));
  const power = '10' + String(d).split('').map((c) => SUPERSCRIPT[c]).join('');
  return m === 1 ? power : `${m}×${power}`;
}

function niceTicks(lo, hi, count) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const raw = span / Math.max(1, count);
  const base = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * base).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

// -- helpers ----------------------------------------------------------------

async function getJson(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function fmt(v) {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e-3 && a < 1e4 ? String(+v.toPrecision(3)) : v.toExponential(2);
}

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...[].concat(children));
  return node;
}

function svg(tag, attrs = {}, children = []) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...[].concat(children));
  return node;
}
