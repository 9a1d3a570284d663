<?xml version="1.0" encoding="UTF-8"?>
<!-- For a DRIMbox source that takes reports only as ORU^R01 (HL7 2.5): turns a CI-SIS MDM^T02/T10/T04
     into an ORU^R01 carrying the same segments (MSH-9 and MSH-12 changed, EVN and TXA dropped).
     The document OBX is copied untouched: the engine refuses any transform that changes it.
     Input: the engine's XML view of the message, <hl7><segment name="PID"><field n="3">...</field>.
     Use in routes.yaml, before the DRIMbox delivery:
       - transform: {xslt: mappings/mdm-to-oru-drimbox.xsl}                                      -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text" encoding="UTF-8"/>

  <xsl:template match="/hl7">
    <xsl:for-each select="segment[not(@name = 'EVN' or @name = 'TXA')]">
      <xsl:value-of select="@name"/>
      <xsl:for-each select="field">
        <xsl:text>|</xsl:text>
        <xsl:choose>
          <xsl:when test="../@name = 'MSH' and @n = '9' and starts-with(., 'MDM')">ORU^R01^ORU_R01</xsl:when>
          <xsl:when test="../@name = 'MSH' and @n = '12' and starts-with(../field[@n = '9'], 'MDM')">2.5</xsl:when>
          <xsl:otherwise><xsl:value-of select="."/></xsl:otherwise>
        </xsl:choose>
      </xsl:for-each>
      <xsl:text>&#13;</xsl:text>
    </xsl:for-each>
  </xsl:template>
</xsl:stylesheet>
