DROP TABLE bulk_file;
DROP TABLE bulk_job;
DROP TABLE import_mark;
