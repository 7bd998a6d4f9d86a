DROP TABLE rx_line;
DROP TABLE rx_prescription;
