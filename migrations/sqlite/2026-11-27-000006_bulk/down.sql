DROP TABLE sub_queue;
DROP TABLE sub_state;
DROP TABLE bulk_file;
DROP TABLE bulk_job;
DROP TABLE import_mark;
