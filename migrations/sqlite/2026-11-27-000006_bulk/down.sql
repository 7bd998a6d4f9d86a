DROP TABLE bulk_job;
DROP TABLE import_mark;
