DROP TABLE sync_conflict;
DROP TABLE sync_link;
DROP TABLE sync_state;
