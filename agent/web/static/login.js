"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const message = document.getElementById("message");
  message.textContent = "";
  const body = JSON.stringify({name: document.getElementById("name").value,
                               password: document.getElementById("password").value});
  let response;
  try {
    response = await fetch("/api/login", {method: "POST", body, headers: {"Content-Type": "application/json"},
                                           credentials: "same-origin"});
  } catch (err) {
    message.textContent = "The gateway does not answer: is the cable in?";
    return;
  }
  if (response.ok) {
    window.location.href = "/#overview";
    return;
  }
  const data = await response.json().catch(() => ({}));
  message.textContent = (data.error && data.error.message) || `refused (${response.status})`;
});
