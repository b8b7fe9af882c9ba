// The grounding page: POST the chosen file and phrase to /v1/ground, then draw the server's preview of the
// decoded image (so DICOM shows with its window) and every returned box, scaled from original pixels: one box
// labelled with its coordinates, several numbered 1, 2, ... in turn, and for an empty list from a model that
// answers lists ("not present", parse_ok true) a "Not found" banner on the image, which is not an error.
// Orientation: the server decodes a photo upright by its EXIF Orientation, as this browser shows the file
// (CSS image-orientation: from-image), and answers in that frame; the page draws the server's preview, never
// the local file, so the picture, the canvas size and the box always share one frame.
// A new request and every error first clear the previous result (image, box, coordinates, text), so one
// image's boxes are never shown beside another file's name.
"use strict";
const $ = (id) => document.getElementById(id);
const SIDE = 640;  // every image is drawn with its longest side at SIDE canvas pixels (small ones scaled up)
const LABEL_PX = 14;  // label font size; the label is kept inside the canvas

$("token").value = sessionStorage.getItem("medground-token") || "";

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function clearResult() {
  const canvas = $("canvas");
  canvas.width = 1;  // resizing also wipes the pixels
  canvas.height = 1;
  canvas.dataset.scale = "";
  for (const id of ["coords", "reason", "meta", "trained", "knowledge"]) $(id).textContent = "";
  $("coords").dataset.box = "null";
  $("coords").dataset.boxes = "[]";
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the preview could not be shown"));
    img.src = src;
  });
}

function drawLabel(ctx, text, x1, y1, width, height, colour, bold) {
  ctx.font = `${bold ? "bold " : ""}${LABEL_PX}px monospace`;
  const w = ctx.measureText(text).width + 4;
  const x = Math.min(Math.max(0, x1), Math.max(0, width - w));
  // above the box when there is room, else just inside its top edge, never below the canvas
  let y = y1 - 4 >= LABEL_PX ? y1 - 4 : Math.min(y1 + LABEL_PX + 2, height - 4);
  y = Math.max(LABEL_PX, y);
  ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
  ctx.fillRect(x, y - LABEL_PX, w, LABEL_PX + 3);
  ctx.fillStyle = colour;
  ctx.fillText(text, x + 2, y);
}

// Box i is drawn in COLOURS[i % 4]: the first in red, as a single box always was.
const COLOURS = ["#ff2020", "#20d0ff", "#ffd020", "#40ff60"];

function drawBanner(ctx, long, short, width) {
  ctx.font = `bold ${LABEL_PX + 4}px system-ui, sans-serif`;
  const text = ctx.measureText(long).width + 16 <= width ? long : short;  // a narrow image gets the short one
  const w = ctx.measureText(text).width + 16;
  const x = Math.max(0, (width - w) / 2);
  ctx.fillStyle = "rgba(0, 0, 0, 0.7)";
  ctx.fillRect(x, 8, w, LABEL_PX + 16);
  ctx.fillStyle = "#ffffff";
  ctx.fillText(text, x + 8, LABEL_PX + 14);
}

async function draw(answer) {
  const img = await loadImage("data:image/png;base64," + answer.preview_png);
  const scale = SIDE / Math.max(answer.image.width, answer.image.height);
  const canvas = $("canvas");
  canvas.width = Math.round(answer.image.width * scale);
  canvas.height = Math.round(answer.image.height * scale);
  canvas.dataset.scale = String(scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = scale < 1;  // enlarged small images keep their pixels sharp
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  if (answer.parse_ok && answer.boxes.length === 0) {  // a valid answer: "not present", not an error
    drawBanner(ctx, "Not found: the model answered that it is not present", "Not found", canvas.width);
    return;
  }
  const many = answer.boxes.length > 1;
  answer.boxes.forEach((box, i) => {
    const [x1, y1, x2, y2] = box.map((v) => v * scale);
    ctx.lineWidth = 2;
    ctx.strokeStyle = COLOURS[i % COLOURS.length];
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    // one box: its coordinates, as always; several: each numbered (the list below gives coordinates)
    const label = many ? String(i + 1) : box.map((v) => v.toFixed(0)).join(", ");
    drawLabel(ctx, label, x1, y1, canvas.width, canvas.height, COLOURS[i % COLOURS.length], many);
  });
}

function trainedOn(t) {
  if (!t || !t.run) return "";
  const records = Object.entries(t.records || {}).map(([task, n]) => `${n} ${task}`).join(", ");
  const modality = (t.modalities || []).join(", ") || "unknown modality";
  return `Model trained on: ${modality} (${records || "records unknown"}; run ${t.run}, ` +
    `${t.manifest || "?"}${t.sources && t.sources.length ? ", " + t.sources.join(", ") : ""}). ` +
    "Answers on other kinds of images are not meaningful.";
}

function knowledgeLine(answer) {
  const why = {request: "as sent", phrase: `"${answer.knowledge_match}" in the phrase`,
               only_key: "the run's only key", none: "no finding of the run's keys in the phrase",
               off: "the model was trained without it"}[answer.knowledge_source] || answer.knowledge_source;
  return `prior knowledge: ${answer.knowledge_key || "none"} (${why})`;
}

function coordsLine(boxes) {
  const one = (b) => `x1=${b[0]}, y1=${b[1]}, x2=${b[2]}, y2=${b[3]}`;
  if (boxes.length === 1) return `box (original pixels): ${one(boxes[0])}`;
  return `${boxes.length} boxes (original pixels): ` + boxes.map((b, i) => `${i + 1}: ${one(b)}`).join("; ");
}

function show(answer) {
  const coords = $("coords");
  const found = answer.boxes.length > 0;
  const absent = answer.parse_ok && !found;  // the model says "not present": an answer, not a failure
  coords.dataset.box = JSON.stringify(answer.boxes[0] || null);
  coords.dataset.boxes = JSON.stringify(answer.boxes);
  coords.textContent = found ? coordsLine(answer.boxes)
    : absent ? "no box: the model answered that the finding is not present" : "no box in the answer";
  $("reason").textContent = found || absent ? "" : `Why: ${answer.no_box_reason || "no usable box"}`;
  setStatus(found ? (answer.boxes.length > 1 ? `Found ${answer.boxes.length} regions.` : "Found.")
            : absent ? "Not found: the model answered that the finding is not present in this image."
            : "The model gave no usable box; the reason and its answer are below.", !found && !absent);
  $("knowledge").textContent = knowledgeLine(answer);
  $("trained").textContent = trainedOn(answer.trained_on);
  $("meta").textContent = `image ${answer.image.width}×${answer.image.height} ${answer.image.kind} · ` +
    `adapter v${answer.adapter_version} · ${answer.latency_ms.toFixed(0)} ms · answer: ${answer.text}`;
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearResult();
  const file = $("file").files[0];
  if (!file) { setStatus("Choose an image first.", true); return; }
  const token = $("token").value.trim();
  sessionStorage.setItem("medground-token", token);
  const body = new FormData();
  body.append("image", file);
  body.append("phrase", $("phrase").value);
  if ($("knowledge_key").value.trim()) body.append("knowledge_key", $("knowledge_key").value.trim());
  body.append("preview", "true");
  document.body.dataset.state = "busy";
  $("go").disabled = true;
  setStatus("Locating…", false);
  try {
    const response = await fetch("/v1/ground", {
      method: "POST", body, headers: token ? { Authorization: "Bearer " + token } : {},
    });
    const answer = await response.json();
    if (!response.ok) {
      clearResult();
      setStatus(`Error ${response.status} for ${file.name}: ${answer.detail || response.statusText}`, true);
      document.body.dataset.state = "error";
      return;
    }
    await draw(answer);
    show(answer);
    document.body.dataset.state = "done";
  } catch (err) {
    clearResult();
    setStatus("Request failed: " + err.message, true);
    document.body.dataset.state = "error";
  } finally {
    $("go").disabled = false;
  }
});
