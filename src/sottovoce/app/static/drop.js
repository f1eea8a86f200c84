// Drag and drop a file onto the chat to send it: the same path as the file picker (the
// dropped file is handed to it), so the same checks and the same progress bar.
import { $, show } from "./dom.js";

export function initDrop(current) {
  const pane = $("chat-pane");
  const hint = document.createElement("p");
  hint.id = "drop-hint";
  hint.className = "drop-hint";
  hint.textContent = "Drop the file to send it";
  hint.setAttribute("aria-hidden", "true");
  show(hint, false);
  pane.append(hint);
  let depth = 0;
  const carriesFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  pane.addEventListener("dragenter", (e) => {
    if (!carriesFiles(e) || !current()) return;
    e.preventDefault();
    depth += 1;
    pane.classList.add("dropping");
    show(hint, true);
  });
  pane.addEventListener("dragover", (e) => {
    if (!carriesFiles(e) || !current()) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
  });
  const leave = () => {
    depth = 0;
    pane.classList.remove("dropping");
    show(hint, false);
  };
  pane.addEventListener("dragleave", () => { depth -= 1; if (depth <= 0) leave(); });
  pane.addEventListener("drop", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    leave();
    const files = e.dataTransfer.files;
    if (!current() || !files.length) return;
    if (files.length > 1) {
      $("chat-error").textContent = "Drop one file at a time";
      return;
    }
    const input = $("file");
    input.files = files;
    input.dispatchEvent(new Event("change"));
  });
}
