// virion serve: the micrograph mode (POST /api/scan). Plain JS; boxes drawn as SVG over the picture.
"use strict";

(function () {
  const $ = sel => document.querySelector(sel);
  const SVG = "http://www.w3.org/2000/svg";

  function setStatus(text) { $("#scan-status").textContent = text || ""; }

  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }

  function render(r) {
    $("#scan-result").hidden = false;
    $("#scan-verdict").textContent = r.verdict.description;
    $("#scan-verdict").dataset.verdict = r.verdict.verdict;
    $("#scan-image").src = r.image;
    const svg = $("#scan-boxes");
    svg.textContent = "";
    svg.setAttribute("viewBox", "0 0 " + r.width + " " + r.height);
    const stroke = Math.max(2, r.width / 300);
    for (const p of r.particles) {
      const rect = svgEl("rect", {
        x: p.xmin, y: p.ymin, width: p.xmax - p.xmin, height: p.ymax - p.ymin,
        fill: "none", stroke: r.colours[p.class] || "red", "stroke-width": stroke, class: "particle",
      });
      const title = svgEl("title", {});
      title.textContent = p.class + " " + (100 * p.probability).toFixed(0) + "%";
      rect.appendChild(title);
      svg.appendChild(rect);
    }
    // scale bar, bottom left
    const bar = r.scale_bar_nm / r.nm_per_px;
    const y = r.height * 0.95;
    svg.appendChild(svgEl("rect", { x: r.width * 0.04, y: y, width: bar, height: r.height * 0.012, fill: "white", stroke: "black", class: "scale-bar" }));
    const label = svgEl("text", { x: r.width * 0.04 + bar / 2, y: y - r.height * 0.01, "text-anchor": "middle", fill: "white", "font-size": r.height * 0.03 });
    label.textContent = r.scale_bar_nm + " nm";
    svg.appendChild(label);
    const body = $("#scan-counts tbody");
    body.textContent = "";
    const counts = Object.entries(r.verdict.counts).sort((a, b) => b[1] - a[1]);
    for (const [name, n] of counts) {
      const tr = document.createElement("tr");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.borderColor = r.colours[name] || "red";
      const td = document.createElement("td");
      td.appendChild(swatch);
      td.appendChild(document.createTextNode(name));
      const tdn = document.createElement("td");
      tdn.className = "num";
      tdn.textContent = n;
      tr.appendChild(td);
      tr.appendChild(tdn);
      body.appendChild(tr);
    }
    $("#scan-caption").textContent = r.particles.length + " particle(s) of " + r.candidates + " candidate(s); " +
      r.nm_per_px + " nm/px (" + r.nm_per_px_from + "); classifier " + r.model + ", min. probability " + r.min_confidence;
  }

  async function run() {
    const file = $("#scan-file").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file, file.name);
    if ($("#scan-nm").value) form.append("nm_per_px", $("#scan-nm").value);
    if ($("#scan-conf").value) form.append("min_confidence", $("#scan-conf").value);
    const model = document.querySelector("#model");
    if (model && model.value) form.append("model", model.value);
    $("#scan-run").disabled = true;
    setStatus("Scanning " + file.name + "\u2026");
    try {
      const response = await fetch("/api/scan", { method: "POST", body: form });
      let body = null;
      try { body = await response.json(); } catch (err) { body = null; }
      if (!response.ok) throw new Error((body && body.error) || ("the server answered " + response.status));
      render(body);
      setStatus("");
    } catch (err) {
      setStatus(err.message);
    } finally {
      $("#scan-run").disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#scan-file").addEventListener("change", () => { $("#scan-run").disabled = !$("#scan-file").files.length; });
    $("#scan-run").addEventListener("click", run);
  });
})();
