// virion serve: the page's behaviour. Plain JS, no framework, no external assets.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  let info = null;
  let chosen = [];       // File objects, in the order chosen
  let lastCsv = null;

  function pct(p) { return (100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1) + "%"; }

  function setStatus(text) { $("#status").textContent = text || ""; }

  function addMessage(text) {
    const div = document.createElement("div");
    div.className = "message";
    div.setAttribute("role", "alert");
    div.textContent = text;
    $("#messages").appendChild(div);
  }

  async function postForm(url, form) {
    let response;
    try {
      response = await fetch(url, { method: "POST", body: form });
    } catch (err) {
      throw new Error("the virion server did not answer (" + err.message + "); is `virion serve` still running?");
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) {
      throw new Error((body && body.error) || ("the server answered " + response.status));
    }
    return body;
  }

  function fmt(x) { return x === null || x === undefined ? "\u2014" : x.toFixed(3); }

  function renderCard(data) {
    const card = data.card;
    $("#run-name").textContent = card.run;
    if (card.synthetic) {
      $("#synthetic-banner").hidden = false;
      $("#synthetic-why").textContent = card.synthetic_reason ? "Why this banner: " + card.synthetic_reason + "." : "";
    }
    const body = $("#card-models tbody");
    body.textContent = "";
    for (const m of card.models) {
      const tr = document.createElement("tr");
      const cells = [m.name, m.input_size ? m.input_size + " px" : "?", m.weights, fmt(m.test_accuracy), fmt(m.macro_f1)];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i >= 3) td.className = "num";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    $("#class-count").textContent = card.class_names.length;
    const ul = $("#card-classes");
    ul.textContent = "";
    for (const name of card.class_names) {
      const li = document.createElement("li");
      li.textContent = name;
      ul.appendChild(li);
    }
    const notes = [];
    if (card.data) notes.push("Trained on: " + card.data);
    notes.push(...card.notes);
    $("#card-notes").textContent = notes.join(" ");

    const select = $("#model");
    select.textContent = "";
    for (const name of data.models) {
      const opt = document.createElement("option");
      opt.value = name;
      opt.textContent = (name === "ensemble" ? "ensemble (average of all models)" :
        name === "ensemble-weighted" ? "ensemble (validation-fitted weights)" : name) +
        (name === data.default_model ? " (recommended)" : "");
      if (name === data.default_model && data.recommended) opt.title = data.recommended.why;
      select.appendChild(opt);
    }
    select.value = data.default_model;
  }

  function chooseFiles(files) {
    chosen = Array.from(files || []);
    $("#chosen").textContent = chosen.length === 0 ? "" :
      chosen.length === 1 ? chosen[0].name : chosen.length + " files: " + chosen.map(f => f.name).join(", ");
    $("#classify").disabled = chosen.length === 0;
  }

  function renderBars(list, result) {
    const chart = $(".chart", list);
    const chance = info.chance;
    for (const item of result.top) {
      const li = document.createElement("li");
      li.title = item.class + ": " + (100 * item.probability).toFixed(2) + "%";
      const name = document.createElement("span"); name.className = "name"; name.textContent = item.class;
      const track = document.createElement("span"); track.className = "track";
      const fill = document.createElement("span"); fill.className = "fill";
      fill.style.width = (100 * item.probability).toFixed(2) + "%";
      const mark = document.createElement("span"); mark.className = "chance";
      mark.style.left = (100 * chance).toFixed(2) + "%";
      track.append(fill, mark);
      const prob = document.createElement("span"); prob.className = "prob"; prob.textContent = pct(item.probability);
      li.append(name, track, prob);
      chart.appendChild(li);
    }
    $(".chance-note", list).textContent = "dotted line: chance (1/" + info.class_names.length + " = " + pct(chance) + ")";
  }

  async function explain(article, file, classIndex) {
    const wrap = $(".cam-wrap", article);
    wrap.classList.remove("ready");
    const used = $("#model").dataset.used || $("#model").value;
    if (info.gradcam && info.gradcam[used] === false) {
      $(".cam-loading", article).textContent = "Grad-CAM not available: " + used + " is not a network";
      return;
    }
    $(".cam-loading", article).textContent = "computing Grad-CAM\u2026";
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("model", $("#model").dataset.used || $("#model").value);
    if (classIndex !== null && classIndex !== undefined) form.append("class_index", String(classIndex));
    try {
      const cam = await postForm("/api/explain", form);
      const img = $(".overlay", article);
      img.src = cam.overlay_png;
      img.alt = "Grad-CAM of " + cam.class_name + " by " + cam.model;
      $(".cam-class", article).value = String(cam.class_index);
      $(".cam-note", article).textContent = cam.model + ": p(" + cam.class_name + ") = " + pct(cam.confidence) +
        (cam.note ? ". " + cam.note : "");
      wrap.classList.add("ready");
    } catch (err) {
      $(".cam-loading", article).textContent = "no Grad-CAM: " + err.message;
    }
  }

  function renderResult(result, file) {
    const article = $("#result-template").content.firstElementChild.cloneNode(true);
    $(".file", article).textContent = result.name;
    if (!result.ok) {
      article.classList.add("failed");
      $(".verdict", article).textContent = "not classified";
      $(".cols", article).remove();
      const warn = $(".warning", article);
      warn.hidden = false;
      warn.className = "error-text";
      const prefix = result.name + ": ";
      warn.textContent = result.error.startsWith(prefix) ? result.error.slice(prefix.length) : result.error;
      return article;
    }
    article.dataset.predicted = result.predicted;
    $(".verdict", article).textContent = result.predicted + " \u00b7 " + pct(result.confidence);
    if (result.low_confidence) {
      const warn = $(".warning", article);
      warn.hidden = false;
      warn.textContent = "Low confidence: the top class has " + pct(result.confidence) +
        ", below " + pct(info.low_confidence_below) + " (halfway from chance, " + pct(info.chance) +
        ", to certainty). Treat this prediction as uncertain.";
    }
    const img = $(".input", article);
    img.src = result.input_png;
    $(".seen figcaption", article).textContent = "as the model sees it: " + result.input_shape[1] + "\u00d7" +
      result.input_shape[0] + " px, grayscale";
    renderBars(article, result);
    $(".gradient", article).style.background = "linear-gradient(to right, " + info.colour_stops.join(", ") + ")";
    const select = $(".cam-class", article);
    info.class_names.forEach((name, i) => {
      const opt = document.createElement("option");
      opt.value = String(i);
      opt.textContent = name + (name === result.predicted ? " (top)" : "");
      select.appendChild(opt);
    });
    select.value = String(result.top[0].index);
    select.addEventListener("change", () => explain(article, file, Number(select.value)));
    explain(article, file, result.top[0].index);
    return article;
  }

  async function classify() {
    if (!chosen.length) return;
    $("#messages").textContent = "";
    $("#classify").disabled = true;
    const model = $("#model").value;
    const tta = $("#tta").checked;
    setStatus("classifying " + chosen.length + " image(s) with " + model + (tta ? " and TTA" : "") + "\u2026");
    const form = new FormData();
    for (const f of chosen) form.append("files", f, f.name);
    form.append("model", model);
    form.append("tta", tta ? "1" : "0");
    const files = chosen.slice();
    try {
      const data = await postForm("/api/predict", form);
      $("#model").dataset.used = data.model;
      const results = $("#results");
      results.textContent = "";
      const failed = [];
      data.results.forEach((r, i) => {
        if (!r.ok) failed.push(r.name);
        results.appendChild(renderResult(r, files[i]));
      });
      const ok = data.results.length - failed.length;
      if (failed.length) {
        const div = document.createElement("div");
        div.className = "summary";
        div.setAttribute("role", "alert");
        div.textContent = failed.length + " file(s) could not be read: " + failed.join(", ") + " (reasons below).";
        $("#messages").appendChild(div);
      }
      lastCsv = data.csv;
      $("#download").disabled = !lastCsv;
      setStatus(ok + " of " + data.results.length + " image(s) classified with " + data.model +
        (data.tta ? " (TTA)" : "") + ".");
    } catch (err) {
      addMessage(err.message);
      setStatus("");
    } finally {
      $("#classify").disabled = chosen.length === 0;
    }
  }

  function download() {
    if (!lastCsv) return;
    const url = URL.createObjectURL(new Blob([lastCsv], { type: "text/csv" }));
    const a = document.createElement("a");
    a.href = url;
    a.download = "virion-predictions.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  async function start() {
    const input = $("#files");
    input.addEventListener("change", () => chooseFiles(input.files));
    const drop = $("#drop");
    drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); chooseFiles(e.dataTransfer.files); });
    $("#classify").addEventListener("click", classify);
    $("#download").addEventListener("click", download);
    try {
      const response = await fetch("/api/info");
      info = await response.json();
      renderCard(info);
      document.body.dataset.ready = "1";
    } catch (err) {
      addMessage("could not read the model card (" + err.message + ")");
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
