// warren.js: join a warren room from a browser. No dependencies.
//
//   const room = warren.connect({ room: "lobby", clientId: "music-box", auth: "token" });
//   room.onmessage = (data) => console.log(data);   // string or ArrayBuffer
//   room.onclose = (code, reason) => {};             // after the last attempt
//   room.send("hello");
//   room.close();
//
// Reconnects with exponential backoff and jitter (not after a close the
// backend chose with a 4xxx code other than 4008/4010, which say "try again").
(function (root) {
  "use strict";

  function connect(options) {
    var base = options.url || (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
    var url = base + "/_warren/rooms/" + encodeURIComponent(options.room) +
      (options.clientId ? "?clientId=" + encodeURIComponent(options.clientId) : "");
    var minDelay = options.minDelay || 500, maxDelay = options.maxDelay || 30000;
    var attempt = 0, socket = null, closedByUser = false, queue = [];
    var room = {
      onmessage: null, onclose: null, onopen: null,
      send: function (data) {
        if (socket && socket.readyState === 1) socket.send(data); else queue.push(data);
      },
      close: function (code, reason) {
        closedByUser = true;
        if (socket) socket.close(code || 1000, reason || "");
      }
    };

    function open() {
      socket = new WebSocket(url);
      socket.binaryType = "arraybuffer";
      socket.onopen = function () {
        attempt = 0;
        if (options.auth !== undefined) socket.send(options.auth);
        while (queue.length) socket.send(queue.shift());
        if (room.onopen) room.onopen();
      };
      socket.onmessage = function (event) { if (room.onmessage) room.onmessage(event.data); };
      socket.onclose = function (event) {
        var final = closedByUser ||
          (event.code >= 4000 && event.code !== 4008 && event.code !== 4010);
        if (final) {
          if (room.onclose) room.onclose(event.code, event.reason);
          return;
        }
        var step = Math.min(maxDelay, minDelay * Math.pow(2, attempt++));
        setTimeout(open, step / 2 + Math.random() * step / 2);
      };
    }
    open();
    return room;
  }

  root.warren = { connect: connect };
})(typeof window !== "undefined" ? window : this);
