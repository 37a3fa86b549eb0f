"""Operations: health, models and versions, admin, the page at / and the API documentation."""
