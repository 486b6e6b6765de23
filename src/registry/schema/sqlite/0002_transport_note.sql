-- Why the agent is on its transport (e.g. "WebSocket won the race: ...").
ALTER TABLE connections ADD COLUMN transport_note TEXT NOT NULL DEFAULT '';
